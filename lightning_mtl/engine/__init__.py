"""Per-objective gradients, Gramians and the balanced backward step."""

from lightning_mtl.engine.balance import Backend, GradientEngine, ObjectiveGradients, Scope
from lightning_mtl.engine.jacobian import JacobianComputer
from lightning_mtl.engine.scope import (
    reachable_leaves,
    shared_parameters,
    submodule_parameters,
    used_parameters,
)

__all__ = [
    "Backend",
    "GradientEngine",
    "JacobianComputer",
    "ObjectiveGradients",
    "Scope",
    "reachable_leaves",
    "shared_parameters",
    "submodule_parameters",
    "used_parameters",
]
