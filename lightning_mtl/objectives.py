"""Named objectives, and groups that combine several losses into one objective."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

ObjectiveGroups = Mapping[str, Mapping[str, float]]
"""Group name → {loss name: weight}: each group is one objective, ``Σ weight · loss``."""


@dataclass(frozen=True)
class Objectives:
    """What ``compute_objectives`` may return when it designates a shared representation.

    Args:
        losses: loss name → scalar loss.
        representation: a tensor that every objective depends on through it alone (e.g. the
            trunk's output features). With ``scope="representation"`` the engine balances the
            gradients with respect to this tensor instead of the trunk's parameters, which is
            much cheaper (one backward through the trunk).

    Example::

        >>> import torch
        >>> features = torch.ones(4, 3, requires_grad=True)
        >>> out = Objectives({"a": features.sum(), "b": features.mean()}, representation=features)
        >>> sorted(out.losses)
        ['a', 'b']
    """

    losses: Mapping[str, Tensor]
    representation: Tensor | None = None


def check_groups(groups: ObjectiveGroups) -> dict[str, dict[str, float]]:
    """Validate group definitions and return them as plain dictionaries.

    Example::

        >>> check_groups({"s": {"ce": 0.35}, "u": {"supcon": 0.5, "con": 0.5}})
        {'s': {'ce': 0.35}, 'u': {'supcon': 0.5, 'con': 0.5}}
    """
    if not groups:
        raise ValueError("groups is empty: define at least one group, or pass groups=None.")
    checked: dict[str, dict[str, float]] = {}
    for group, members in groups.items():
        if not members:
            raise ValueError(f"group {group!r} has no losses.")
        for loss, weight in members.items():
            if not math.isfinite(weight):
                raise ValueError(f"weight of {loss!r} in group {group!r} must be finite.")
        checked[group] = {loss: float(weight) for loss, weight in members.items()}
    return checked


def check_losses(losses: object) -> dict[str, Tensor]:
    """Validate what ``compute_objectives`` returned: a non-empty mapping of scalar tensors."""
    if isinstance(losses, Objectives):
        losses = losses.losses
    if not isinstance(losses, Mapping):
        raise TypeError(
            "compute_objectives must return a mapping of objective name to scalar loss (or "
            f"lightning_mtl.Objectives); got {type(losses).__name__}."
        )
    if not losses:
        raise ValueError("compute_objectives returned no objectives; return at least one loss.")
    for name, loss in losses.items():
        if not isinstance(name, str):
            raise TypeError(f"objective names must be strings; got {name!r}.")
        if not isinstance(loss, Tensor):
            raise TypeError(f"objective {name!r} must be a tensor; got {type(loss).__name__}.")
        if loss.ndim != 0:
            raise ValueError(
                f"objective {name!r} must be a scalar; got shape {tuple(loss.shape)}. Reduce it "
                "(e.g. with .mean()) before returning it."
            )
        if not loss.requires_grad:
            raise ValueError(
                f"objective {name!r} does not require grad: it is not connected to any trainable "
                "parameter."
            )
    return dict(losses)


def combine(
    losses: Mapping[str, Tensor], groups: ObjectiveGroups | None
) -> tuple[tuple[str, ...], list[Tensor]]:
    """The objectives a strategy sees: the losses themselves, or their weighted groups.

    Returns:
        The objective names and their scalar values (float32, attached to the graph).

    Example::

        >>> import torch
        >>> losses = {"ce": torch.tensor(2.0), "supcon": torch.tensor(1.0)}
        >>> losses["con"] = torch.tensor(3.0)
        >>> combine(losses, {"s": {"ce": 0.5}, "u": {"supcon": 1.0, "con": 1.0}})
        (('s', 'u'), [tensor(1.), tensor(4.)])
    """
    if groups is None:
        names = tuple(losses)
        return names, [losses[name].float() for name in names]
    unknown = sorted({loss for members in groups.values() for loss in members} - set(losses))
    if unknown:
        raise ValueError(
            f"groups name unknown objectives {unknown}; compute_objectives returned "
            f"{sorted(losses)}."
        )
    ungrouped = sorted(set(losses) - {loss for members in groups.values() for loss in members})
    if ungrouped:
        raise ValueError(
            f"objectives {ungrouped} belong to no group; add them to a group or stop returning "
            "them (log diagnostics with self.log instead)."
        )
    values = [
        torch.stack([weight * losses[loss].float() for loss, weight in members.items()]).sum()
        for members in groups.values()
    ]
    return tuple(groups), values


def per_class_objectives(
    per_sample_losses: Tensor, targets: Tensor, num_classes: int, prefix: str = "class_"
) -> dict[str, Tensor]:
    """Split per-sample losses into one objective per class: ``L_c = Σ_{i: y_i = c} ℓ_i / B``.

    The objectives sum to the batch-mean loss, so their gradients sum to the ordinary gradient
    (the class-as-task view of the PLOT paper, §4.1). A class absent from the batch gets a zero
    objective (a zero gradient row), built without a host synchronisation.

    Args:
        per_sample_losses: ``[B]`` losses, e.g. ``F.cross_entropy(..., reduction="none")``.
        targets: ``[B]`` integer class labels in ``[0, num_classes)``.
        num_classes: number of classes ``K``.
        prefix: objective names are ``f"{prefix}{c}"``.

    Example::

        >>> losses = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
        >>> objectives = per_class_objectives(losses, torch.tensor([0, 2, 0, 2]), 3)
        >>> {name: round(float(value), 2) for name, value in objectives.items()}
        {'class_0': 1.0, 'class_1': 0.0, 'class_2': 1.5}
    """
    if per_sample_losses.ndim != 1 or targets.shape != per_sample_losses.shape:
        raise ValueError(
            "per_sample_losses and targets must both have shape [B]; got "
            f"{tuple(per_sample_losses.shape)} and {tuple(targets.shape)}."
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive; got {num_classes}.")
    if targets.dtype.is_floating_point:
        raise ValueError("targets must be integer class labels.")
    sums = per_sample_losses.new_zeros(num_classes).index_add(0, targets, per_sample_losses)
    per_class = sums / per_sample_losses.shape[0]
    return {f"{prefix}{c}": per_class[c] for c in range(num_classes)}
