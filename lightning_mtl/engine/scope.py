"""Which parameters each objective depends on, and which ones form the balanced scope."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor, nn


def reachable_leaves(root: Tensor) -> set[int]:
    """Ids of the leaf tensors (parameters) that ``root`` depends on, by walking its graph.

    Example::

        >>> import torch
        >>> a, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
        >>> reachable_leaves((a * 2).sum()) == {id(a)}
        True
    """
    if root.grad_fn is None:
        return {id(root)} if root.requires_grad else set()
    leaves: set[int] = set()
    seen: set[object] = set()
    stack = [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions if next_node is not None)
    return leaves


def shared_parameters(
    objectives: Sequence[Tensor], parameters: Iterable[nn.Parameter]
) -> list[nn.Parameter]:
    """The trainable parameters that more than one objective depends on, in module order."""
    counts: dict[int, int] = {}
    for objective in objectives:
        for leaf in reachable_leaves(objective):
            counts[leaf] = counts.get(leaf, 0) + 1
    return [p for p in parameters if p.requires_grad and counts.get(id(p), 0) > 1]


def used_parameters(
    objectives: Sequence[Tensor], parameters: Iterable[nn.Parameter]
) -> list[nn.Parameter]:
    """The trainable parameters that at least one objective depends on, in module order."""
    used: set[int] = set()
    for objective in objectives:
        used |= reachable_leaves(objective)
    return [p for p in parameters if p.requires_grad and id(p) in used]


def submodule_parameters(module: nn.Module, names: Sequence[str]) -> list[nn.Parameter]:
    """The trainable parameters of the named submodules (``"backbone.layer4"``), deduplicated.

    Raises:
        ValueError: for an unknown submodule name, or when the submodules hold no trainable
            parameter.
    """
    if isinstance(names, str):
        names = [names]
    modules = dict(module.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ValueError(
            f"unknown submodule(s) {unknown} in the scope; the model has {outline(module)}."
        )
    selected: dict[int, nn.Parameter] = {}
    for name in names:
        for parameter in modules[name].parameters():
            if parameter.requires_grad:
                selected.setdefault(id(parameter), parameter)
    if not selected:
        raise ValueError(f"the scope {list(names)} has no trainable parameter.")
    return list(selected.values())


def outline(module: nn.Module, depth: int = 2) -> list[str]:
    """The names of ``module``'s submodules down to ``depth`` levels that hold trainable
    parameters: what a scope can name (for error messages).

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 1)))
        >>> outline(net)
        ['0', '1', '1.1']
    """
    return [
        name
        for name, child in module.named_modules()
        if name
        and name.count(".") < depth
        and any(parameter.requires_grad for parameter in child.parameters())
    ]
