"""The optimiser the embedded recipes share."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch


def sgd_with_cosine_decay(
    module: pl.LightningModule, lr: float, weight_decay: float, momentum: float = 0.9
) -> dict[str, Any]:
    """SGD with momentum, the learning rate cosine-annealed per epoch to 1% of ``lr`` over the
    Trainer's ``max_epochs`` (100 when unbounded), as a ``configure_optimizers`` return value.

    Example::

        >>> model = pl.LightningModule()
        >>> model.layer = torch.nn.Linear(2, 1)
        >>> model.trainer = pl.Trainer(max_epochs=10, logger=False, enable_checkpointing=False,
        ...                            enable_progress_bar=False, enable_model_summary=False)
        >>> config = sgd_with_cosine_decay(model, lr=0.1, weight_decay=5e-4)
        >>> config["lr_scheduler"]["scheduler"].T_max, config["lr_scheduler"]["interval"]
        (10, 'epoch')
    """
    optimizer = torch.optim.SGD(
        module.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    epochs = module.trainer.max_epochs if module.trainer.max_epochs not in (None, -1) else 100
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(epochs, 1), eta_min=lr * 0.01
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
