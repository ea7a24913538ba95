"""RLW: random loss weighting, fresh random weights on the simplex at every step."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies.base import LossBatch, LossWeighting, step_generator

Distribution = Literal["normal", "uniform", "dirichlet"]


def draw(distribution: Distribution, count: int, generator: torch.Generator) -> Tensor:
    """``count`` float32 draws ``λ̃`` from ``distribution`` on the generator's device."""
    device = generator.device
    if distribution == "normal":
        return torch.randn(count, generator=generator, device=device)
    if distribution == "uniform":
        return torch.rand(count, generator=generator, device=device)
    # Dirichlet(1, …, 1) is a normalised vector of independent Exp(1) draws, which (unlike
    # torch.distributions.Dirichlet) can be drawn from a given generator.
    exponential = torch.empty(count, device=device).exponential_(generator=generator)
    return exponential / exponential.sum()


class RLW(LossWeighting):
    """Random loss weighting (Lin, Ye, Zhang & Tsang, "Reasonable Effectiveness of Random
    Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022).

    At every step the weights are ``softmax(λ̃)`` with ``λ̃`` drawn afresh, by default from the
    standard normal distribution (the paper's default). The weights sum to 1, as in the paper;
    one backward pass per step.

    The draw comes from :func:`~lightning_mtl.strategies.base.step_generator` seeded with
    ``seed`` and the optimizer step, so that every DDP process draws the same weights without
    communication and a resumed run repeats the uninterrupted one. The numbers drawn on a CUDA
    device differ from those drawn on the CPU for the same seed.

    ``distribution`` offers the paper's other continuous choices: ``"uniform"`` (``λ̃`` uniform on
    ``[0, 1]``) and ``"dirichlet"`` (``λ̃ ~ Dirichlet(1, …, 1)``). As in the authors' code the
    softmax is applied to every draw, the Dirichlet one included.

    Args:
        distribution: ``"normal"``, ``"uniform"`` or ``"dirichlet"``.
        seed: the seed of the per-step generator.

    Example::

        >>> import torch
        >>> from lightning_mtl.strategies.base import TrainingProgress
        >>> rlw = RLW(seed=3)
        >>> first = rlw.aggregate(torch.eye(3), progress=TrainingProgress(step=5))
        >>> again = rlw.aggregate(torch.eye(3), progress=TrainingProgress(step=5))
        >>> torch.equal(first, again), round(float(first.sum()), 6)
        (True, 1.0)
    """

    reads_loss_values = False

    def __init__(self, distribution: Distribution = "normal", seed: int = 0) -> None:
        if distribution not in ("normal", "uniform", "dirichlet"):
            raise ValueError(
                f"distribution must be 'normal', 'uniform' or 'dirichlet'; got {distribution!r}."
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer; got {seed!r}.")
        self.distribution: Distribution = distribution
        self.seed = seed

    @override
    def weights(self, batch: LossBatch) -> Tensor:
        generator = step_generator(self.seed, batch.progress.step, batch.losses.device)
        return torch.softmax(draw(self.distribution, batch.num_objectives, generator), dim=0)
