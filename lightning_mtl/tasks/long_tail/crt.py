"""cRT: re-train the classifier alone, with class-balanced sampling, in a second stage."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from typing_extensions import override

from lightning_mtl.mixin import MultiObjectiveMixin
from lightning_mtl.tasks.long_tail.resnet_cifar import NormalizedLinear


class ClassifierRetraining(Callback):
    """Classifier re-training (cRT, Kang et al., ICLR 2020) from epoch ``epoch`` on: the
    representation is frozen, the classifier re-initialised and trained alone on class-balanced
    batches (the second stage of "cRT + Mixup", which PLOT augments, appendix).

    At the start of epoch ``epoch`` the callback

    1. freezes every parameter outside ``classifier`` (``requires_grad = False``: the mixin and
       SGD then leave them untouched; weight decay and momentum included) and, with
       ``freeze_batchnorm``, keeps the BatchNorm layers outside it in eval mode, so their running
       statistics stay those the classifier is tested with;
    2. with ``reinit``, re-initialises the classifier (PyTorch's default initialisation; the
       uniform one of :class:`~lightning_mtl.tasks.long_tail.resnet_cifar.NormalizedLinear`) from a
       generator seeded with ``seed``, and clears its optimizer state (a fresh momentum);
    3. with ``class_balanced``, sets the data module's ``class_balanced`` switch (see
       :class:`~lightning_mtl.tasks.long_tail.DigitsLongTailDataModule` and
       :class:`~lightning_mtl.tasks.long_tail.CIFARLongTailDataModule`): the training sampler draws
       classes uniformly from this epoch on, without rebuilding the DataLoader;
    4. sets the module's ``mixup_enabled`` to ``mixup`` when it has one (cRT + Mixup mixes up in
       the first stage only, as in the authors' code);
    5. with ``lr``, sets the learning rate of every parameter group, again at each later epoch
       (over the LR scheduler: the authors re-train CIFAR classifiers at 0.01 for 30 epochs).

    The switch is kept in :attr:`switched_at_epoch` / :attr:`switched_at_step` (in the
    checkpoint); a run resumed after the switch freezes again without re-initialising, one resumed
    at the switch epoch switches exactly as the uninterrupted run did. The epoch of the switch is
    logged as ``crt/switch_epoch``, and ``crt/active`` (1 from the switch on) every step. Put the
    switch after the multi-objective phase (e.g. :class:`~lightning_mtl.callbacks.TemporalMOO`'s
    ``E``): a strategy that balances a frozen scope cannot run. Under DDP (not tested here),
    parameters that stop requiring gradients mid-run likely need
    ``Trainer(strategy="ddp_find_unused_parameters_true")``.

    Args:
        epoch: the first (0-based) epoch of the second stage.
        classifier: the dotted name of the classifier submodule.
        reinit: re-initialise the classifier (cRT does).
        class_balanced: switch the data module to class-balanced sampling.
        freeze_batchnorm: keep BatchNorm statistics outside the classifier fixed.
        mixup: whether the module keeps mixing up in the second stage.
        lr: learning rate of the second stage; ``None`` keeps the scheduler's.
        seed: seed of the re-initialisation.

    Example::

        >>> crt = ClassifierRetraining(epoch=200, classifier="net.fc", lr=0.01)
        >>> crt.active(199), crt.active(200)
        (False, True)
    """

    def __init__(
        self,
        epoch: int,
        classifier: str = "net.fc",
        reinit: bool = True,
        class_balanced: bool = True,
        freeze_batchnorm: bool = True,
        mixup: bool = False,
        lr: float | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int; got {epoch!r}.")
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be positive or None; got {lr}.")
        self.epoch = epoch
        self.classifier = classifier
        self.reinit = reinit
        self.class_balanced = class_balanced
        self.freeze_batchnorm = freeze_batchnorm
        self.mixup = mixup
        self.lr = lr
        self.seed = seed
        self.switched_at_epoch: int | None = None
        self.switched_at_step: int | None = None
        self._frozen = False
        self._frozen_batchnorms: list[nn.Module] = []

    def active(self, epoch: int) -> bool:
        """Whether ``epoch`` belongs to the re-training stage."""
        return epoch >= self.epoch

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._classifier_of(pl_module)  # reports a wrong name up front
        if self.class_balanced and stage == "fit":
            datamodule = getattr(trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "class_balanced"):
                raise TypeError(
                    "ClassifierRetraining(class_balanced=True) needs a data module with a "
                    "`class_balanced` switch (e.g. "
                    "lightning_mtl.tasks.long_tail.CIFARLongTailDataModule); "
                    "pass class_balanced=False to keep the sampler."
                )
        self._frozen = False

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run resumed inside the second stage: freeze again before its first batch.
        if self.active(trainer.current_epoch):
            self._enter(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.active(trainer.current_epoch):
            self._enter(trainer, pl_module)
            if self.lr is not None:
                for group in trainer.optimizers[0].param_groups:
                    group["lr"] = self.lr

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        active = self.active(trainer.current_epoch)
        if active:
            # Validation puts modules back in train mode; keep the frozen statistics frozen.
            for module in self._frozen_batchnorms:
                module.eval()
            if self.switched_at_step == trainer.global_step:
                pl_module.log("crt/switch_epoch", float(self.epoch), on_step=True)
        pl_module.log("crt/active", float(active), on_step=True, on_epoch=False)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for module in self._frozen_batchnorms:
            module.train(pl_module.training)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(epoch=self.epoch, classifier=self.classifier)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "switched_at_epoch": self.switched_at_epoch,
            "switched_at_step": self.switched_at_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.switched_at_epoch = state_dict["switched_at_epoch"]
        self.switched_at_step = state_dict["switched_at_step"]

    # --- internals -------------------------------------------------------------------------

    def _classifier_of(self, pl_module: pl.LightningModule) -> nn.Module:
        try:
            return pl_module.get_submodule(self.classifier)
        except AttributeError as error:
            raise ValueError(
                f"ClassifierRetraining: {type(pl_module).__name__} has no submodule "
                f"{self.classifier!r}."
            ) from error

    def _enter(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.class_balanced:
            trainer.datamodule.class_balanced = True  # type: ignore[attr-defined]
        if hasattr(pl_module, "mixup_enabled"):
            pl_module.mixup_enabled = self.mixup
        if self._frozen:
            return
        classifier = self._classifier_of(pl_module)
        inside = {id(p) for p in classifier.parameters()}
        for parameter in pl_module.parameters():
            if id(parameter) not in inside:
                parameter.requires_grad_(False)
        kept = {id(m) for m in classifier.modules()}
        self._frozen_batchnorms = (
            [m for m in pl_module.modules() if isinstance(m, _BatchNorm) and id(m) not in kept]
            if self.freeze_batchnorm
            else []
        )
        for module in self._frozen_batchnorms:
            module.eval()
        if isinstance(pl_module, MultiObjectiveMixin):
            pl_module.reset_balancing_scope()  # the trainable parameters changed
        if self.switched_at_epoch is None:
            if self.reinit:
                _reinitialise(classifier, self.seed)
                optimizer = trainer.optimizers[0]
                for parameter in classifier.parameters():
                    optimizer.state.pop(parameter, None)
            self.switched_at_epoch = trainer.current_epoch
            self.switched_at_step = trainer.global_step
        self._frozen = True


@torch.no_grad()
def _reinitialise(classifier: nn.Module, seed: int) -> None:
    """PyTorch's default initialisation of every layer of ``classifier``, drawn from the global
    generators forked and seeded with ``seed`` (so a resumed run draws the same weights and the
    run's own random stream is untouched)."""
    devices = sorted(
        {p.device.index or 0 for p in classifier.parameters() if p.device.type == "cuda"}
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for module in classifier.modules():
            if isinstance(module, NormalizedLinear):
                nn.init.uniform_(module.weight, -1.0, 1.0)  # as NormalizedLinear.__init__
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
