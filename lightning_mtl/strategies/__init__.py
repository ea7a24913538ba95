"""Gradient-balancing strategies, one method per file, grouped by what they consume.

* :class:`LossWeighting` (one backward pass): :class:`LinearScalarization`, :class:`PGI`,
  :class:`DWA`, :class:`UW`, :class:`RLW`, :class:`FAMO`.
* :class:`GramianWeighting`: :class:`MGDA`, :class:`CAGrad`, :class:`UPGrad`, :class:`IMTLG`,
  :class:`AlignedMTL`, :class:`NashMTL`, :class:`FairGrad`, :class:`EPO`, :class:`PLOTCAGrad`.
* :class:`JacobianStrategy` / :class:`GradientSurgery`: :class:`PCGrad`, :class:`GradVac`,
  :class:`GradDrop`, :class:`RGB`.
* Wrappers: :class:`SharpnessAware` (SAM around any strategy) and :class:`PLOT` (PLOT's CAGrad
  over classes inside SAM).

Any torchjd aggregator or weighting: :func:`from_torchjd`. :func:`accelerator_code_paths` runs
the solvers' GPU code paths on the CPU (for tests and benchmarks).
"""

from lightning_mtl.strategies.aligned_mtl import AlignedMTL
from lightning_mtl.strategies.base import (
    EditedGradients,
    GradientBalancingStrategy,
    GradientSurgery,
    GramianBatch,
    GramianWeighting,
    JacobianBatch,
    JacobianStrategy,
    LossBatch,
    LossWeighting,
    ObjectiveBatch,
    Requirement,
    TrainingProgress,
    strategy_from_config,
)
from lightning_mtl.strategies.cagrad import CAGrad
from lightning_mtl.strategies.code_paths import accelerator_code_paths
from lightning_mtl.strategies.dwa import DWA
from lightning_mtl.strategies.epo import EPO
from lightning_mtl.strategies.fairgrad import FairGrad
from lightning_mtl.strategies.famo import FAMO
from lightning_mtl.strategies.graddrop import GradDrop
from lightning_mtl.strategies.gradvac import GradVac
from lightning_mtl.strategies.imtl_g import IMTLG
from lightning_mtl.strategies.linear_scalarization import LinearScalarization
from lightning_mtl.strategies.mgda import MGDA
from lightning_mtl.strategies.nash_mtl import NashMTL
from lightning_mtl.strategies.pcgrad import PCGrad
from lightning_mtl.strategies.pgi import PGI
from lightning_mtl.strategies.plot import PLOT, PLOTCAGrad
from lightning_mtl.strategies.rgb import RGB
from lightning_mtl.strategies.rlw import RLW
from lightning_mtl.strategies.sharpness_aware import SharpnessAware
from lightning_mtl.strategies.torchjd_adapter import from_torchjd
from lightning_mtl.strategies.upgrad import UPGrad
from lightning_mtl.strategies.uw import UW

__all__ = [
    "DWA",
    "EPO",
    "FAMO",
    "IMTLG",
    "MGDA",
    "PGI",
    "PLOT",
    "RGB",
    "RLW",
    "UW",
    "AlignedMTL",
    "CAGrad",
    "EditedGradients",
    "FairGrad",
    "GradDrop",
    "GradVac",
    "GradientBalancingStrategy",
    "GradientSurgery",
    "GramianBatch",
    "GramianWeighting",
    "JacobianBatch",
    "JacobianStrategy",
    "LinearScalarization",
    "LossBatch",
    "LossWeighting",
    "NashMTL",
    "ObjectiveBatch",
    "PCGrad",
    "PLOTCAGrad",
    "Requirement",
    "SharpnessAware",
    "TrainingProgress",
    "UPGrad",
    "accelerator_code_paths",
    "from_torchjd",
    "strategy_from_config",
]
