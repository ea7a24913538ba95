"""PLOT's temporal design: multi-objective training first, then plain training."""

from __future__ import annotations

from lightning_mtl.callbacks.switch import StrategySwitch
from lightning_mtl.strategies.base import GradientBalancingStrategy
from lightning_mtl.strategies.linear_scalarization import LinearScalarization

PAPER_EPOCH_CHOICES = (10, 30, 50, 80)
"""The early-stop epochs E that PLOT searches (the PLOT paper's appendix: E from {10, 30, 50, 80};
the authors' configs use 20 / 50 / 80 for CIFAR-10-LT at imbalance 50 / 100 / 200 and 30 for
CIFAR-100-LT)."""


class TemporalMOO(StrategySwitch):
    """The configured multi-objective strategy for the first ``epochs`` epochs, then plain
    training on the sum of the objectives (PLOT's SFE → TSO early stop, §4.1 of the PLOT paper).

    During shared feature extraction (SFE) the strategy balances the objectives (e.g. CAGrad
    over per-class objectives from :func:`~lightning_mtl.per_class_objectives`, whose sum is the
    base method's loss); from epoch ``E`` on, task-specific optimisation (TSO) trains on that
    sum. The flag ``balancing/moo`` is logged (1 during SFE, 0 after), the switch epoch is kept
    in :attr:`switched_at_epoch` and logged once as ``balancing/switch_epoch``, and both survive
    resume.

    Args:
        epochs: ``E``, the epochs of multi-objective training; the paper's grid is
            :data:`PAPER_EPOCH_CHOICES`.
        base_strategy: the strategy after the switch; default the unweighted sum.

    Example::

        >>> temporal = TemporalMOO(epochs=30)
        >>> temporal.in_first_phase(step=0, epoch=29), temporal.in_first_phase(step=0, epoch=30)
        (True, False)
    """

    def __init__(self, epochs: int, base_strategy: GradientBalancingStrategy | None = None) -> None:
        super().__init__(
            epochs=epochs,
            first=None,
            second=base_strategy or LinearScalarization(),
            log_name="moo",
        )
