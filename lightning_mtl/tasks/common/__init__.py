"""What the domain slices share: the data-module base, seeded samplers, a resumable training
loader, local dataset files, optimiser recipes and the small CNN of the embedded digits
recipes."""

from lightning_mtl.tasks.common.datamodule import SplitDataModule
from lightning_mtl.tasks.common.digits import DigitsEncoder
from lightning_mtl.tasks.common.loader import LoaderPosition, ResumableDataLoader
from lightning_mtl.tasks.common.optim import (
    groups_without_decay_on_biases_and_norms,
    sgd_with_cosine_decay,
    sgd_with_warmup_multistep,
)
from lightning_mtl.tasks.common.samplers import EpochSeededRandomSampler, EpochSeededSampler

__all__ = [
    "DigitsEncoder",
    "EpochSeededRandomSampler",
    "EpochSeededSampler",
    "LoaderPosition",
    "ResumableDataLoader",
    "SplitDataModule",
    "groups_without_decay_on_biases_and_norms",
    "sgd_with_cosine_decay",
    "sgd_with_warmup_multistep",
]
