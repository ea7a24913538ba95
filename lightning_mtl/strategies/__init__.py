"""Gradient-balancing strategies, one method per file.

Loss-based (one backward pass): :class:`LinearScalarization`, :class:`PGI`, :class:`DWA`,
:class:`UW`, :class:`RLW`, :class:`FAMO`. Gramian-based: :class:`MGDA`, :class:`CAGrad`,
:class:`UPGrad`, :class:`IMTLG`, :class:`AlignedMTL`, :class:`NashMTL`, :class:`FairGrad`,
:class:`EPO`, :class:`PLOT` (CAGrad over classes, with SAM). Jacobian-based:
:class:`PCGrad`, :class:`GradVac`, :class:`GradDrop`, :class:`RGB`.
Any torchjd aggregator or weighting: :func:`from_torchjd`. :func:`accelerator_code_paths`
runs the solvers' GPU code paths on the CPU (for tests and benchmarks).
"""

from lightning_mtl.strategies.aligned_mtl import AlignedMTL
from lightning_mtl.strategies.base import (
    GradientBalancingStrategy,
    ObjectiveBatch,
    Requirement,
    TrainingProgress,
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
from lightning_mtl.strategies.plot import PLOT
from lightning_mtl.strategies.rgb import RGB
from lightning_mtl.strategies.rlw import RLW
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
    "FairGrad",
    "GradDrop",
    "GradVac",
    "GradientBalancingStrategy",
    "LinearScalarization",
    "NashMTL",
    "ObjectiveBatch",
    "PCGrad",
    "Requirement",
    "TrainingProgress",
    "UPGrad",
    "accelerator_code_paths",
    "from_torchjd",
]
