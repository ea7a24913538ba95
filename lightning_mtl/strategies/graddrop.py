"""GradDrop: per coordinate, keep the gradients of one sign, chosen at random by sign purity."""

from __future__ import annotations

import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies._gradient_surgery import (
    checked_seed,
    column_blocks,
    positive_part,
)
from lightning_mtl.strategies.base import (
    EditedGradients,
    GradientSurgery,
    JacobianBatch,
    step_generator,
)


def signed_sums(jacobian: Tensor) -> tuple[Tensor, Tensor]:
    """``[D]`` sums over the objectives of the positive parts and of the negative parts' magnitudes
    of each coordinate, a block of columns at a time.

    Example::

        >>> signed_sums(torch.tensor([[1.0, -2.0], [3.0, 1.0]]))
        (tensor([4., 1.]), tensor([0., 2.]))
    """
    blocks = column_blocks(jacobian)
    positive = torch.cat([block.clamp_min(0.0).sum(dim=0) for block in blocks])
    negative = torch.cat([(-block).clamp_min_(0.0).sum(dim=0) for block in blocks])
    return positive, negative


def sign_purity(positive: Tensor, negative: Tensor) -> Tensor:
    """``P = ½ (1 + Σ_i g_i / Σ_i |g_i|)``, written as ``positive / (positive + negative)``; ½ where
    every gradient is zero (any value would do: nothing is kept there).

    Example::

        >>> sign_purity(torch.tensor([3.0, 0.0, 0.0]), torch.tensor([1.0, 2.0, 0.0]))
        tensor([0.7500, 0.0000, 0.5000])
    """
    total = positive + negative
    return torch.where(total > 0, positive / positive_part(total), torch.full_like(total, 0.5))


class GradDrop(GradientSurgery):
    """Gradient sign dropout (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick
    a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout", NeurIPS 2020).

    For each coordinate of the per-objective gradients ``g_i``, the sign purity
    ``P = ½ (1 + Σ_i g_i / Σ_i |g_i|)`` is compared with a uniform random threshold ``U``: where
    ``P > U`` only the positive parts of the gradients are kept, elsewhere only the negative parts.
    A coordinate where all gradients agree in sign is therefore kept whole. With the leak ``ℓ``
    the update is ``Σ_i (ℓ g_i + (1 − ℓ) M_i ∘ g_i)``, ``M_i`` the kept mask of objective ``i``.

    Hyper-parameters and choices:

    * ``leak``: the paper's default is 0 (pure GradDrop), as in LibMTL; 1 gives the plain sum.
      The paper allows one leak per objective (e.g. 1 for the main task in transfer learning);
      here a single leak applies to every objective.
    * The paper's monotone ``f`` in ``f(P) > U`` is the identity here, as in LibMTL.
    * ``P = U`` (probability zero) keeps the negative parts.
    * The paper inserts GradDrop at a layer's activations ``A`` and, for batched inputs, first
      sums each objective's gradient over the batch weighted by ``sign(A)``, so that ``P`` is per
      activation unit and the mask is shared by the batch. A strategy sees only the flattened
      per-objective gradients of the balanced scope, so here ``P``, ``U`` and the mask are per
      coordinate of that scope: per parameter with a parameter scope, or per sample and unit with
      the engine's representation scope (``scope="representation"``, the paper's setting without
      the batch sum).

    ``U`` is drawn as ``torch.rand(D)`` from :func:`~lightning_mtl.strategies.base.step_generator`
    seeded with ``seed`` and the optimizer step, so DDP processes agree without communication and
    a resumed run repeats the uninterrupted one (draws on a CUDA device differ from those on the
    CPU). The work is ``O(T D)``, a block of columns at a time; an inf or a NaN in a gradient
    stays in the update.

    Args:
        leak: ``ℓ`` in ``[0, 1]``.
        seed: the seed of the per-step generator of the thresholds.

    Example::

        >>> import torch
        >>> GradDrop().aggregate(torch.tensor([[1.0, -2.0], [3.0, -1.0]]))  # no conflict: the sum
        tensor([ 4., -3.])
    """

    def __init__(self, leak: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= leak <= 1.0:
            raise ValueError(f"leak must lie in [0, 1]; got {leak}.")
        self.leak = float(leak)
        self.seed = checked_seed(seed)

    @override
    def edit(self, batch: JacobianBatch) -> EditedGradients:
        jacobian = batch.jacobian
        generator = step_generator(self.seed, batch.progress.step, jacobian.device)
        threshold = torch.rand(jacobian.shape[1], generator=generator, device=jacobian.device)
        positive, negative = signed_sums(jacobian)
        keep_positive = (sign_purity(positive, negative) > threshold).to(positive.dtype)
        # A share 1 − ℓ of each gradient follows the mask; the share ℓ always passes. The factors
        # multiply rather than select (torch.where), so that an inf or a NaN in either sum reaches
        # the update even where its sign is dropped (inf · 0 is NaN).
        masked = (1.0 - self.leak) * keep_positive
        kept, dropped = self.leak + masked, 1.0 - masked
        return EditedGradients(
            direction=positive * kept - negative * dropped,
            rows=lambda: jacobian.clamp_min(0) * kept + jacobian.clamp_max(0) * dropped,
        )
