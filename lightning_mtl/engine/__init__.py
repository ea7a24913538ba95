"""Per-objective gradients, Gramians, the balanced backward step, and the contract by which
callbacks observe gradients."""

from lightning_mtl.engine.balance import (
    Backend,
    GradientEngine,
    ObjectiveGradients,
    Scope,
    StepResult,
)
from lightning_mtl.engine.jacobian import JacobianComputer
from lightning_mtl.engine.observers import BALANCED_SCOPE, GradientObserver
from lightning_mtl.engine.precision import full_precision
from lightning_mtl.engine.scope import (
    reachable_leaves,
    shared_parameters,
    submodule_parameters,
    used_parameters,
)

__all__ = [
    "BALANCED_SCOPE",
    "Backend",
    "GradientEngine",
    "GradientObserver",
    "JacobianComputer",
    "ObjectiveGradients",
    "Scope",
    "StepResult",
    "full_precision",
    "reachable_leaves",
    "shared_parameters",
    "submodule_parameters",
    "used_parameters",
]
