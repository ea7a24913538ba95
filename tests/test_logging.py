"""What the mixin and the callbacks log, and how every logger keeps it: metric names that
TensorBoard, CSV, MLflow and W&B leave unchanged, the strategy's weights and the per-objective
gradient norms on the logging cadence, the strategy as hyper-parameters with ``hp_metric``, and
figures through each logger's image API or as PNG files."""

from __future__ import annotations

import csv
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from helpers import DATA, TinyModule, grads_of, make_trainer
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from torch.utils.data import DataLoader

from lightning_mtl.callbacks import GradientAngleLogger
from lightning_mtl.callbacks.gradient_angles import log_figure
from lightning_mtl.naming import metric_name
from lightning_mtl.strategies import MGDA, PGI

ALLOWED = re.compile(r"^[A-Za-z0-9_/\-]+$")


class OddNames(TinyModule):
    """TinyModule whose second objective's name holds a character MLflow drops."""

    def compute_objectives(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        output = super().compute_objectives(batch, batch_idx)
        return {"cls": output.losses["cls"], "rep+aux": output.losses["rep"]}


def _fit(strategy: Any, tmp_path: Path, **kwargs: Any) -> tuple[TinyModule, list[Any]]:
    loggers = [TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")]
    module = OddNames(strategy)
    trainer = make_trainer(
        max_epochs=2,
        logger=loggers,
        log_every_n_steps=2,
        callbacks=[GradientAngleLogger(every_n_steps=2)],
        **kwargs,
    )
    trainer.fit(module, DataLoader(DATA, batch_size=8))
    return module, loggers


def test_every_logged_name_is_kept_by_every_logger(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    module, (tensorboard, csv_logger) = _fit(MGDA(), tmp_path)
    names = set(module.trainer.logged_metrics)
    expected = {
        "train/cls",
        "train/rep_aux",
        "angle/cls_vs_rep_aux",
        "cos/cls_vs_rep_aux",
        "angle/rep_aux_vs_update",
        "balancing/weight/cls",
        "balancing/weight/rep_aux",
        "grad_norm/cls",
        "grad_norm/rep_aux",
    }
    assert expected <= {name.removesuffix("_step").removesuffix("_epoch") for name in names}
    assert all(ALLOWED.match(name) for name in names), names

    # TensorBoard: the scalar tags written to the event file.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(tensorboard.log_dir)
    events.Reload()
    assert names <= set(events.Tags()["scalars"])
    # CSV: the column names.
    with open(Path(csv_logger.log_dir) / "metrics.csv") as handle:
        assert names <= set(next(csv.reader(handle)))

    # MLflow and W&B: Lightning's own loggers, with stand-ins for the packages' clients.
    @dataclass
    class Metric:
        key: str
        value: float
        timestamp: int
        step: int

    entities = types.ModuleType("mlflow.entities")
    entities.Metric = Metric  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mlflow", types.ModuleType("mlflow"))
    monkeypatch.setitem(sys.modules, "mlflow.entities", entities)
    kept: dict[str, list[str]] = {"mlflow": [], "wandb": []}

    class MLflow(MLFlowLogger):
        def __init__(self) -> None:
            self._prefix, self._log_batch_kwargs = "", {}

        @property
        def experiment(self) -> Any:
            def log_batch(run_id: str, metrics: list[Metric]) -> None:
                kept["mlflow"] += [metric.key for metric in metrics]

            return types.SimpleNamespace(log_batch=log_batch)

        @property
        def run_id(self) -> str:
            return "run"

    class Wandb(WandbLogger):
        def __init__(self) -> None:
            self._prefix, self._wandb_init = "", {}

        @property
        def experiment(self) -> Any:
            return types.SimpleNamespace(log=lambda values: kept["wandb"].extend(values))

    values = {name: 1.0 for name in names}
    MLflow().log_metrics(values, step=1)
    Wandb().log_metrics(values, step=1)
    assert set(kept["mlflow"]) == names
    assert set(kept["wandb"]) == names | {"trainer/global_step"}


def test_weights_and_gradient_norms_are_the_steps_own(tmp_path: Path) -> None:
    module = TinyModule(MGDA())
    trainer = make_trainer(max_steps=1, log_every_n_steps=1)
    initial = type(module.net)()
    initial.load_state_dict(module.net.state_dict())
    trainer.fit(module, DataLoader(DATA, batch_size=32))
    losses = initial.losses(*DATA.tensors)
    trunk = list(initial.trunk.parameters())
    rows = torch.stack([grads_of(losses["cls"], trunk), grads_of(losses["rep"], trunk)])
    metrics = trainer.callback_metrics
    for index, name in enumerate(("cls", "rep")):
        assert float(metrics[f"grad_norm/{name}"]) == pytest.approx(
            float(rows[index].norm()), rel=1e-5
        )
    expected = MGDA()
    expected.aggregate(rows, names=["cls", "rep"])
    for name, value in expected.last_weights.items():
        assert float(metrics[f"balancing/weight/{name}"]) == pytest.approx(float(value), rel=1e-5)


def test_a_loss_weighting_logs_its_weights_and_no_norms_it_did_not_compute() -> None:
    module = TinyModule(PGI(alpha=0.3))
    trainer = make_trainer(max_steps=2, log_every_n_steps=1)
    trainer.fit(module, DataLoader(DATA, batch_size=16))
    metrics = trainer.callback_metrics
    assert float(metrics["balancing/weight/cls"]) == pytest.approx(0.3)
    assert float(metrics["balancing/alpha"]) == pytest.approx(0.3)
    assert not any(name.startswith("grad_norm/") for name in metrics)


def test_the_strategy_and_hp_metric_reach_the_hparams_view(tmp_path: Path) -> None:
    from lightning_mtl.tasks.multitask import MultiDigitsDataModule, MultiDigitsModule

    model = MultiDigitsModule(strategy=MGDA(normalization="l2"))
    logger = TensorBoardLogger(tmp_path, name="hp")
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, logger=logger)
    trainer.fit(model, datamodule=MultiDigitsDataModule(batch_size=32))
    assert float(trainer.callback_metrics["hp_metric"]) == pytest.approx(
        float(trainer.callback_metrics["val/acc_mean"])
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert "hp_metric" in events.Tags()["scalars"]
    values = [event.value for event in events.Scalars("hp_metric")]
    assert values[-1] == pytest.approx(float(trainer.callback_metrics["val/acc_mean"]))
    hparams = (Path(logger.log_dir) / "hparams.yaml").read_text()
    assert "class_path: lightning_mtl.strategies.mgda.MGDA" in hparams
    assert "normalization: l2" in hparams


def test_figures_go_through_each_loggers_image_api_or_to_png(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    _, (tensorboard, csv_logger) = _fit(PGI(alpha=0.3, representation="rep+aux"), tmp_path)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(tensorboard.log_dir)
    events.Reload()
    assert [image.step for image in events.Images("gradient_cosines")] == [0, 1]
    pngs = sorted((Path(csv_logger.log_dir) / "gradient_cosines").glob("*.png"))
    assert [path.name for path in pngs] == ["epoch=0.png", "epoch=1.png"]
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in pngs)

    sent: list[tuple[str, Any]] = []

    class Trainer:
        current_epoch, global_step, default_root_dir = 3, 30, str(tmp_path)
        loggers: ClassVar[list[Any]] = [
            types.SimpleNamespace(
                experiment=None,
                log_image=lambda key, images, step: sent.append(("wandb", images[0])),
            ),
            types.SimpleNamespace(
                experiment=types.SimpleNamespace(
                    log_figure=lambda run, figure, path: sent.append((path, figure))
                ),
                run_id="run",
            ),
        ]

    figure = Figure()
    assert log_figure(Trainer(), "cosines", figure) == ["wandb", "mlflow"]  # type: ignore[arg-type]
    assert sent == [("wandb", figure), ("cosines/epoch=3.png", figure)]
    assert metric_name("grad_norm", "a b.c") == "grad_norm/a_b_c"
