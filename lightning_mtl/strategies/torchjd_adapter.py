"""Any torchjd aggregator or weighting as a strategy, with this package's AMP, DDP and callbacks."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies.base import (
    GradientBalancingStrategy,
    GramianBatch,
    GramianWeighting,
    JacobianBatch,
    JacobianStrategy,
)

Statistic = Literal["gramian", "jacobian"]


class TorchJDAggregator(JacobianStrategy):
    """A torchjd ``Aggregator`` applied to the ``[T, D]`` Jacobian of the balanced scope.

    Build it with :func:`from_torchjd` (its ``repr`` says so).
    """

    def __init__(self, aggregator: torch.nn.Module) -> None:
        self.aggregator = aggregator

    @override
    def direction(self, batch: JacobianBatch) -> Tensor:
        return self.aggregator(batch.jacobian)

    def __repr__(self) -> str:
        return f"from_torchjd({self.aggregator!r})"


class TorchJDWeighting(GramianWeighting):
    """Weights from a torchjd ``Weighting`` of the ``[T, T]`` Gramian ``J Jᵀ``.

    Build it with :func:`from_torchjd` (its ``repr`` says so).
    """

    def __init__(self, weighting: torch.nn.Module) -> None:
        self.weighting = weighting

    @override
    def weights(self, batch: GramianBatch) -> Tensor:
        return self.weighting(batch.gramian)

    def __repr__(self) -> str:
        return f"from_torchjd({self.weighting!r})"


class TorchJDMatrixWeighting(JacobianStrategy):
    """Weights from a torchjd ``Weighting`` of the ``[T, D]`` Jacobian itself; the update is
    their combination of the rows.

    Build it with :func:`from_torchjd` (its ``repr`` says so).
    """

    def __init__(self, weighting: torch.nn.Module) -> None:
        self.weighting = weighting

    @override
    def direction(self, batch: JacobianBatch) -> Tensor:
        weights = self.weighting(batch.jacobian)
        self.record_weights(batch.names, weights)
        return weights.to(batch.jacobian.dtype) @ batch.jacobian

    def __repr__(self) -> str:
        return f"from_torchjd({self.weighting!r}, statistic='jacobian')"


def from_torchjd(method: Any, statistic: Statistic | None = None) -> GradientBalancingStrategy:
    """Wrap a `torchjd <https://torchjd.org>`_ method as a strategy.

    The wrapped method then runs inside this package's engine: under mixed precision it sees
    unscaled gradients, under DDP the Jacobian averaged over processes, and gradient callbacks
    observe it like any other strategy.

    * An ``Aggregator`` (``UPGrad()``, ``MGDA()``, ``PCGrad()``…) becomes a
      :class:`~lightning_mtl.strategies.JacobianStrategy` whose update is the aggregator applied
      to the scope's Jacobian.
    * A ``Weighting`` becomes a weighting strategy. ``statistic`` names the matrix it reads: the
      Gramian ``J Jᵀ`` (a :class:`~lightning_mtl.strategies.GramianWeighting`; torchjd's Gramian
      weightings such as ``UPGradWeighting``) or the Jacobian itself (a
      :class:`~lightning_mtl.strategies.JacobianStrategy`; torchjd's matrix weightings such as
      ``MeanWeighting``). By default it is inferred from torchjd's base
      classes, looking through ``CRMOGMWeighting``; pass it for weightings composed otherwise
      (such as ``weighting << function``).
      Weightings that expect a matrix built from two independent batches (``MoDoWeighting``,
      ``SDMGradWeighting``) do not fit this one-batch engine.

    torchjd methods may read values on the host (the default projector of ``UPGrad`` solves its
    problems with quadprog on the CPU), which synchronises the step on a GPU.

    State kept inside torchjd methods (``torchjd.Stateful`` ones such as ``GradVac``) is not
    written to checkpoints: after a resume it starts afresh. Randomised torchjd methods
    (``Random``, ``GradDrop``) draw from the global generator, so under DDP the processes agree
    only if their generators do; prefer :class:`~lightning_mtl.strategies.rlw.RLW` there.

    Args:
        method: a ``torchjd.aggregation.Aggregator`` or ``Weighting``.
        statistic: for a weighting, ``"gramian"`` or ``"jacobian"``; ``None`` infers it.

    Raises:
        ImportError: when torchjd is not installed.

    Example::

        >>> import pytest, torch
        >>> _ = pytest.importorskip("torchjd")  # the example needs torchjd
        >>> from torchjd.aggregation import MGDA, MGDAWeighting
        >>> jacobian = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> from_torchjd(MGDA()).aggregate(jacobian)  # the minimum-norm convex combination
        tensor([0.8000, 0.4000])
        >>> strategy = from_torchjd(MGDAWeighting())
        >>> strategy.requirement.value, strategy.aggregate(jacobian)
        ('gramian', tensor([0.8000, 0.4000]))
    """
    try:
        from torchjd.aggregation import Aggregator, Weighting
    except ImportError as error:
        raise ImportError(
            "from_torchjd needs the torchjd package; install it with `pip install torchjd`."
        ) from error
    if statistic not in (None, "gramian", "jacobian"):
        raise ValueError(f"statistic must be 'gramian', 'jacobian' or None; got {statistic!r}.")
    if isinstance(method, Aggregator):
        if statistic is not None:
            raise ValueError("statistic applies to a torchjd Weighting, not to an Aggregator.")
        return TorchJDAggregator(method)
    if isinstance(method, Weighting):
        statistic = statistic or _weighting_statistic(method)
        if statistic == "jacobian":
            return TorchJDMatrixWeighting(method)
        return TorchJDWeighting(method)
    raise TypeError(
        "from_torchjd takes a torchjd.aggregation.Aggregator or Weighting; "
        f"got {type(method).__name__}."
    )


def _weighting_statistic(weighting: torch.nn.Module) -> Statistic:
    """Which matrix a torchjd weighting reads, from torchjd's (private) base classes."""
    from torchjd.aggregation import CRMOGMWeighting

    try:
        from torchjd.aggregation._weighting_bases import _GramianWeighting, _MatrixWeighting
    except ImportError as error:
        raise ValueError(
            "this torchjd version does not tell which matrix its weightings read; pass "
            "from_torchjd(weighting, statistic='gramian') or statistic='jacobian'."
        ) from error
    # CR-MOGM smooths the weights of the weighting it wraps, and reads what that one reads.
    while isinstance(weighting, CRMOGMWeighting):
        weighting = weighting.weighting
    if isinstance(weighting, _GramianWeighting):
        return "gramian"
    if isinstance(weighting, _MatrixWeighting):
        return "jacobian"
    raise ValueError(
        f"cannot tell whether {type(weighting).__name__} reads the Gramian or the Jacobian; "
        "pass from_torchjd(weighting, statistic='gramian') or statistic='jacobian'."
    )
