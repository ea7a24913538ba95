"""Long-tailed recognition: CIFAR-10/100-LT and long-tailed digits, ResNet-32, the base methods
(LDAM-DRW, Balanced Softmax, logit adjustment, mixup, cRT), PLOT's class-as-task module and
variability collapse, Many / Medium / Few accuracy. Needs
``pip install "lightning-mtl[long_tail]"``."""

from lightning_mtl.extras import require

require("long_tail", "sklearn")

from lightning_mtl.tasks.long_tail.crt import ClassifierRetraining  # noqa: E402
from lightning_mtl.tasks.long_tail.data import (  # noqa: E402
    CIFARLongTailDataModule,
    ClassBalancedSampler,
    DigitsLongTailDataModule,
    long_tail_counts,
    long_tail_indices,
)
from lightning_mtl.tasks.long_tail.losses import (  # noqa: E402
    BalancedSoftmaxLoss,
    DeferredReweighting,
    LDAMLoss,
    LogitAdjustedLoss,
    drw_weights,
    mixup,
)
from lightning_mtl.tasks.long_tail.metrics import LongTailAccuracy, shot_groups  # noqa: E402
from lightning_mtl.tasks.long_tail.models import LongTailClassifier  # noqa: E402
from lightning_mtl.tasks.long_tail.resnet_cifar import ResNetCIFAR, resnet32  # noqa: E402
from lightning_mtl.tasks.long_tail.variability import (  # noqa: E402
    per_class_loss_std,
    variability_collapse_loss,
)

__all__ = [
    "BalancedSoftmaxLoss",
    "CIFARLongTailDataModule",
    "ClassBalancedSampler",
    "ClassifierRetraining",
    "DeferredReweighting",
    "DigitsLongTailDataModule",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "LongTailAccuracy",
    "LongTailClassifier",
    "ResNetCIFAR",
    "drw_weights",
    "long_tail_counts",
    "long_tail_indices",
    "mixup",
    "per_class_loss_std",
    "resnet32",
    "shot_groups",
    "variability_collapse_loss",
]
