"""Log the angles between objectives' gradients, and between each and the applied update."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from typing_extensions import override

from lightning_mtl.engine.geometry import cosine_matrix, cosines_to, degrees
from lightning_mtl.engine.observers import BALANCED_SCOPE, GradientObserver
from lightning_mtl.engine.scope import submodule_parameters
from lightning_mtl.extras import missing_extra_error, optional_import
from lightning_mtl.naming import metric_name, pair


class GradientAngleLogger(GradientObserver, Callback):
    """Every ``every_n_steps`` steps, log gradient angles between objectives.

    Logged, for each pair of objectives ``a``, ``b``: ``angle/a_vs_b`` (degrees) and
    ``cos/a_vs_b``; for each objective and the applied update (the balanced gradient written to
    ``.grad``): ``angle/a_vs_update`` (names as :func:`~lightning_mtl.naming.metric_name` keeps
    them for every logger). Each is logged per step and as its per-epoch mean (the ``_epoch``
    suffix), which is the measure the PGI paper's table 4 reports. At each epoch end, a heatmap of
    the mean pairwise cosines goes to every logger (:func:`log_figure`: its image API where it
    has one, else a PNG under its log directory), and the epoch's mean angles are appended to
    :attr:`history`.

    With more than ``max_pairs`` pairs (T = 40 objectives have 780), the per-pair and per-objective
    values are replaced by summaries: ``angle/mean_pairwise``, ``angle/max_pairwise`` (the most
    conflicting pair), ``cos/conflicting_fraction`` (pairs with a negative cosine) and, with
    ``log_update``, ``angle/mean_to_update`` and ``angle/max_to_update``. Each ``self.log`` costs
    Lightning about half a millisecond of Python (measured on a 2-core CPU: every pair of 40
    objectives made a logged step take 0.9 s); the heatmap still shows every pair.

    Steps off the cadence cost nothing: the mixin computes per-objective gradients only on the
    steps this callback asks for, and reuses the strategy's own when their scopes coincide.

    Args:
        every_n_steps: the cadence, in optimizer steps.
        scope: submodule names whose parameters are measured (e.g. the last transformer block);
            ``None`` measures the balanced scope.
        log_update: also log each objective's angle to the applied update.
        heatmap: log the pairwise-cosine heatmap at each epoch end; ``None`` (default): when
            matplotlib is installed (``pip install "lightning-mtl[plots]"``).
        max_pairs: the most pairs logged one by one; beyond it, summaries (see above); 0 always
            logs the summaries.

    Example::

        >>> logger = GradientAngleLogger(every_n_steps=10, scope=["backbone.blocks.11"])
        >>> logger.scope_key
        'angles:backbone.blocks.11'
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        scope: Sequence[str] | None = None,
        log_update: bool = True,
        heatmap: bool | None = None,
        max_pairs: int = 45,
    ) -> None:
        if max_pairs < 0:
            raise ValueError(f"max_pairs must be a non-negative integer; got {max_pairs}.")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive integer; got {every_n_steps}.")
        if scope is not None and (isinstance(scope, str) or not scope):
            raise ValueError("scope must be a non-empty list of submodule names, or None.")
        self.every_n_steps = every_n_steps
        self.scope = list(scope) if scope is not None else None
        self.log_update = log_update
        has_matplotlib = importlib.util.find_spec("matplotlib") is not None
        if heatmap and not has_matplotlib:
            raise missing_extra_error("plots", ["matplotlib"])
        self.heatmap = has_matplotlib if heatmap is None else heatmap
        self.max_pairs = max_pairs
        self.scope_key = BALANCED_SCOPE if scope is None else "angles:" + ",".join(scope)
        self.history: list[dict[str, float]] = []
        self._parameters: list[nn.Parameter] | None = None
        self._cosine_sum: Tensor | None = None
        self._angle_sums: dict[str, Tensor] = {}
        self._count = 0
        self._names: tuple[str, ...] = ()

    @override
    def wants_objective_gradients(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        return trainer.global_step % self.every_n_steps == 0

    @override
    def objective_gradient_parameters(
        self, pl_module: pl.LightningModule
    ) -> Sequence[nn.Parameter] | None:
        if self.scope is None:
            return None
        if self._parameters is None:
            self._parameters = submodule_parameters(pl_module, self.scope)
        return self._parameters

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        gradients = getattr(pl_module, "objective_gradients", {}).get(self.scope_key)
        if gradients is None:
            return
        names = gradients.names
        cosines = cosine_matrix(gradients.jacobian)
        angles = degrees(cosines)
        to_update = (
            degrees(cosines_to(gradients.jacobian, gradients.update)) if self.log_update else None
        )
        if len(names) * (len(names) - 1) // 2 > self.max_pairs:
            values = _summaries(cosines, angles, to_update)
        else:
            values = _per_pair(names, cosines, angles, to_update)
        for key, value in values.items():
            pl_module.log(key, value, on_step=True, on_epoch=True, batch_size=1)
        if names != self._names:
            self._reset(names)
        self._cosine_sum = cosines if self._cosine_sum is None else self._cosine_sum + cosines
        for key, value in values.items():
            if key.startswith("angle/"):
                self._angle_sums[key] = self._angle_sums.get(key, 0.0) + value.detach()
        self._count += 1

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._count == 0 or self._cosine_sum is None:
            return
        self.history.append(
            {key: float(total) / self._count for key, total in self._angle_sums.items()}
        )
        if self.heatmap and trainer.is_global_zero and trainer.loggers:
            mean = (self._cosine_sum / self._count).cpu()
            log_figure(trainer, "gradient_cosines", cosine_heatmap(self._names, mean))
        self._reset(self._names)

    def _reset(self, names: tuple[str, ...]) -> None:
        self._names = names
        self._cosine_sum = None
        self._angle_sums = {}
        self._count = 0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, scope=self.scope)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])


def _per_pair(
    names: tuple[str, ...], cosines: Tensor, angles: Tensor, to_update: Tensor | None
) -> dict[str, Tensor]:
    """Every pair's angle and cosine, and every objective's angle to the update."""
    values: dict[str, Tensor] = {}
    for i, first in enumerate(names):
        for j in range(i + 1, len(names)):
            values[metric_name("angle", pair(first, names[j]))] = angles[i, j]
            values[metric_name("cos", pair(first, names[j]))] = cosines[i, j]
    if to_update is not None:
        for name, angle in zip(names, to_update, strict=True):
            values[metric_name("angle", pair(name, "update"))] = angle
    return values


def _summaries(cosines: Tensor, angles: Tensor, to_update: Tensor | None) -> dict[str, Tensor]:
    """The mean and largest pairwise angle, the share of conflicting pairs, and the mean and
    largest angle to the update."""
    upper = torch.triu(torch.ones_like(cosines, dtype=torch.bool), diagonal=1)
    pair_angles, pair_cosines = angles[upper], cosines[upper]
    values = {
        "angle/mean_pairwise": pair_angles.mean(),
        "angle/max_pairwise": pair_angles.amax(),
        "cos/conflicting_fraction": (pair_cosines < 0).float().mean(),
    }
    if to_update is not None:
        values["angle/mean_to_update"] = to_update.mean()
        values["angle/max_to_update"] = to_update.amax()
    return values


def cosine_heatmap(names: Sequence[str], cosines: Tensor) -> Any:
    """A heatmap of a ``[T, T]`` cosine matrix (red: conflict, blue: agreement), as a
    ``matplotlib.figure.Figure`` (needs matplotlib: ``pip install "lightning-mtl[plots]"``).

    Example::

        >>> import torch
        >>> figure = cosine_heatmap(["cls", "rep"], torch.tensor([[1.0, -0.5], [-0.5, 1.0]]))
        >>> figure.axes[0].get_title()
        'Mean gradient cosine'
    """
    figure_module = optional_import("matplotlib.figure", "plots")
    size = 2.0 + 0.5 * len(names)
    figure = figure_module.Figure(figsize=(size + 1.0, size))
    axes = figure.add_subplot()
    image = axes.imshow(cosines.numpy(), cmap="RdBu", vmin=-1.0, vmax=1.0)
    axes.set_xticks(range(len(names)), labels=list(names), rotation=45, ha="right")
    axes.set_yticks(range(len(names)), labels=list(names))
    if len(names) <= 12:
        for i in range(len(names)):
            for j in range(len(names)):
                axes.text(j, i, f"{float(cosines[i, j]):.2f}", ha="center", va="center", fontsize=8)
    axes.set_title("Mean gradient cosine")
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    return figure


def log_figure(trainer: pl.Trainer, name: str, figure: Any) -> list[str]:
    """Send a matplotlib figure to every logger of ``trainer`` at the current epoch: through the
    logger's image API where it has one (TensorBoard's ``add_figure``, MLflow's ``log_figure``,
    W&B's ``log_image``), else as ``<log_dir>/<name>/epoch=<n>.png``.

    Returns:
        Where each logger got it: ``"tensorboard"``, ``"mlflow"``, ``"wandb"`` or the PNG's path.
    """
    epoch = trainer.current_epoch
    sent = []
    logger: Any
    for logger in trainer.loggers:
        experiment = logger.experiment
        if isinstance(logger, TensorBoardLogger):
            experiment.add_figure(name, figure, epoch)
            sent.append("tensorboard")
        elif hasattr(logger, "log_image"):  # W&B's wandb.Image takes a matplotlib figure
            logger.log_image(key=name, images=[figure], step=trainer.global_step)
            sent.append("wandb")
        elif hasattr(experiment, "log_figure") and hasattr(logger, "run_id"):
            experiment.log_figure(logger.run_id, figure, f"{name}/epoch={epoch}.png")
            sent.append("mlflow")
        else:
            folder = Path(logger.log_dir or logger.save_dir or trainer.default_root_dir) / name
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"epoch={epoch}.png"
            figure.savefig(path)
            sent.append(str(path))
    return sent
