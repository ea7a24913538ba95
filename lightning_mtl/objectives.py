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
