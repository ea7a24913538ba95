"""Multi-task learning: multi-digits (embedded), CelebA's 40 attributes and NYUv2's three dense
tasks, Δm% and mean rank. Needs ``pip install "lightning-mtl[multitask]"``."""

from lightning_mtl.extras import require

require("multitask", "sklearn", "PIL")

from lightning_mtl.tasks.multitask.data import (  # noqa: E402 - after the dependency check
    CelebADataModule,
    MultiDigitsDataModule,
    NYUv2DataModule,
)
from lightning_mtl.tasks.multitask.metrics import PerTaskAccuracy, delta_m, mean_rank  # noqa: E402
from lightning_mtl.tasks.multitask.models import (  # noqa: E402
    CelebAMultiTask,
    MultiDigitsEncoder,
    MultiDigitsModule,
    NYUv2MultiTask,
)

__all__ = [
    "CelebADataModule",
    "CelebAMultiTask",
    "MultiDigitsDataModule",
    "MultiDigitsEncoder",
    "MultiDigitsModule",
    "NYUv2DataModule",
    "NYUv2MultiTask",
    "PerTaskAccuracy",
    "delta_m",
    "mean_rank",
]
