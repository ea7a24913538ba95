"""PCGrad: project each gradient off the gradients it conflicts with, in a random order."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies._gradient_surgery import (
    Visit,
    checked_seed,
    combine,
    others_in_random_order,
    positive_part,
    sequential_surgery,
)
from lightning_mtl.strategies.base import (
    EditedGradients,
    GradientSurgery,
    JacobianBatch,
    step_generator,
)

Reduction = Literal["sum", "mean"]


def project_if_conflicting(visit: Visit) -> Tensor:
    """PCGrad's rule: when ``g'_i · g_j < 0``, ``g'_i ← g'_i − (g'_i · g_j / ‖g_j‖²) g_j``."""
    step = -visit.inner / positive_part(visit.other_sqnorm)
    return torch.where(visit.inner < 0, step, torch.zeros_like(step))


class PCGrad(GradientSurgery):
    """Projecting conflicting gradients (Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient
    Surgery for Multi-Task Learning", NeurIPS 2020, algorithm 1).

    For each objective ``i``, starting from ``g'_i = g_i`` and visiting the other objectives
    ``j`` in a random order, whenever ``g'_i · g_j < 0`` the conflicting component is removed:
    ``g'_i ← g'_i − (g'_i · g_j / ‖g_j‖²) g_j``, always against the original ``g_j``. The update
    is ``Σ_i g'_i`` (``reduction="sum"``, the paper's and its authors' code's choice, also
    LibMTL's); ``reduction="mean"`` divides it by ``T``, as the widely used PyTorch port
    (WeiChengTseng/Pytorch-PCGrad) does, which only rescales the learning rate. The method has no
    other hyper-parameter.

    Each objective draws its own random order of the others at every step (the paper's
    "in random order"), from :func:`~lightning_mtl.strategies.base.step_generator` seeded with
    ``seed`` and the optimizer step: DDP processes agree without communication and a resumed run
    repeats the uninterrupted one. Orders drawn on a CUDA device differ from those drawn on the
    CPU for the same seed.

    The changed gradients are combinations of the original ones, so the projections run on the
    ``[T, T]`` Gramian, in float64, and the update is one weighted sum of the rows of the Jacobian
    (see ``_gradient_surgery``): :meth:`weights` gives those weights and :meth:`coefficients`
    the changed gradients. The cost is two float64 passes over the Jacobian and ``O(T³)`` work
    on ``[T, T]`` matrices, with no host synchronisation.

    Args:
        reduction: ``"sum"`` or ``"mean"`` of the changed gradients.
        seed: the seed of the per-step generator of the random orders.

    Example::

        >>> import torch
        >>> PCGrad().aggregate(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
        tensor([0.5000, 1.5000])
    """

    def __init__(self, reduction: Reduction = "sum", seed: int = 0) -> None:
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean'; got {reduction!r}.")
        self.reduction: Reduction = reduction
        self.seed = checked_seed(seed)

    def coefficients(self, batch: JacobianBatch) -> Tensor:
        """``[T, T]`` float64 ``C``: the projected gradients are ``C @ batch.jacobian``."""
        generator = step_generator(self.seed, batch.progress.step, batch.jacobian.device)
        order = others_in_random_order(batch.num_objectives, generator)
        return sequential_surgery(batch.jacobian, order, project_if_conflicting).coefficients

    def weights(self, batch: JacobianBatch) -> Tensor:
        """``[T]`` weights of the original gradients: the update is ``weights @ jacobian``."""
        return self._reduce(self.coefficients(batch)).to(batch.jacobian.dtype)

    @override
    def edit(self, batch: JacobianBatch) -> EditedGradients:
        jacobian = batch.jacobian
        coefficients = self.coefficients(batch)
        weights = self._reduce(coefficients)
        self.record_weights(batch.names, weights.float())
        return EditedGradients(
            direction=combine(weights, jacobian),
            rows=lambda: coefficients.to(jacobian.dtype) @ jacobian,
        )

    def _reduce(self, coefficients: Tensor) -> Tensor:
        total = coefficients.sum(dim=0)
        return total / coefficients.shape[0] if self.reduction == "mean" else total
