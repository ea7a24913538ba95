"""Plain summed training for a warm-up, then the configured balancing strategy."""

from __future__ import annotations

from lightning_mtl.callbacks.switch import StrategySwitch
from lightning_mtl.strategies.base import GradientBalancingStrategy
from lightning_mtl.strategies.linear_scalarization import LinearScalarization


class WarmupThenSwitch(StrategySwitch):
    """Train on the plain sum of the objectives for a warm-up, then switch to the strategy that
    the module configured.

    Seed 000 (appendix A.2) employs PGI "only after the warm-up phase", where "standard
    gradient-based optimization" trains on the summed objectives. A scheduled strategy such as
    :class:`~lightning_mtl.strategies.PGI` starts its schedule on the first step after the
    switch. The switch is logged as ``balancing/warmup`` (1 during warm-up, 0 after) and kept in
    :attr:`switched_at_step` / :attr:`switched_at_epoch`, which survive resume.

    Args:
        warmup_epochs: length of the warm-up in epochs.
        warmup_steps: length of the warm-up in optimizer steps (instead of epochs).
        warmup_strategy: the strategy during warm-up; default the unweighted sum.

    Example::

        >>> callback = WarmupThenSwitch(warmup_epochs=5)
        >>> callback.in_warmup(step=120, epoch=4), callback.in_warmup(step=150, epoch=5)
        (True, False)
    """

    def __init__(
        self,
        warmup_epochs: int | None = None,
        warmup_steps: int | None = None,
        warmup_strategy: GradientBalancingStrategy | None = None,
    ) -> None:
        if (warmup_epochs is None) == (warmup_steps is None):
            raise ValueError("give exactly one of warmup_epochs and warmup_steps.")
        super().__init__(
            epochs=warmup_epochs,
            steps=warmup_steps,
            first=warmup_strategy or LinearScalarization(),
            second=None,
            log_name="warmup",
        )

    @property
    def warmup_strategy(self) -> GradientBalancingStrategy:
        """The strategy used during warm-up."""
        assert self.first is not None
        return self.first

    def in_warmup(self, step: int, epoch: int) -> bool:
        """Whether training at this step and epoch is still warming up."""
        return self.in_first_phase(step, epoch)
