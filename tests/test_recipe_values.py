"""Every paper recipe's key hyper-parameters, pinned to the values that the papers or the
authors' published scripts give. Each expected value is a literal with its source beside it;
nothing is read from the YAML under test: the recipe is parsed by the package's CLI (class
defaults filled in, nothing built) and the parsed values are compared with the literals.

Sources: the PLOT paper (Zhou et al., ICLR 2024) and its authors' configs
(``Cifar10_50/100/200.json``, ``Cifar100_*.json``) and ``train_cifar.py`` / ``utils/pareto.py``;
SimGCD's ``scripts/run_<dataset>.sh`` and ``train.py``; the EAGC authors'
``scripts/SimGCD/train_<dataset>.sh`` and ``methods/SimGCD.py``; the PGI paper's §4.1; the RGB
paper and FAMO's ``experiments/celeba/trainer.py``, which it reuses for CelebA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch import LightningDataModule, LightningModule

from lightning_mtl.cli import MultiObjectiveCLI

RECIPES = Path(__file__).resolve().parents[1] / "lightning_mtl" / "recipes"


class _ParseOnly(MultiObjectiveCLI):
    def instantiate_classes(self) -> None:
        pass


def parsed(name: str) -> Any:
    """The validated configuration of the bundled recipe ``<name>``, defaults filled in."""
    return _ParseOnly(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=["--config", str(RECIPES / f"{name}.yaml")],
        run=False,
    ).config


def callback(config: Any, name: str) -> Any:
    (found,) = [c.init_args for c in config.trainer.callbacks if c.class_path.endswith(name)]
    return found


# --- PLOT ----------------------------------------------------------------------------------------

PLOT_BASES = ("ce", "balanced_softmax", "ldam_drw", "crt_mixup")


@pytest.mark.parametrize("base", PLOT_BASES)
@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_plot_recipes(dataset: str, base: str) -> None:
    config = parsed(f"{dataset}_lt_{base}_plot")
    model = config.model.init_args
    plot = model.strategy.init_args
    assert model.strategy.class_path == "lightning_mtl.strategies.PLOT"
    assert plot.rho == 1e-4  # Cifar10_100.json / Cifar100_100.json: "rho": 1.0e-4
    assert plot.c == 0.5  # utils/pareto.py: cagrad(..., alpha=0.5)
    assert plot.rescale == 1  # utils/pareto.py: cagrad(..., rescale=1), g / (1 + alpha**2)
    assert plot.scale == "sum"  # utils/pareto.py overwrite_grad: newgrad * num_class
    if dataset == "cifar10":  # Cifar10_100.json (imbalance 100)
        assert plot.keep_perturbation == 1.0  # "perturb_radius": 1.0
        assert model.variability_weight == 0.01  # "bal_ratio": 0.01
        assert callback(config, "TemporalMOO").epochs == 50  # "pareto_start_epoch": 50
        assert model.num_classes == 10
    else:  # Cifar100_100.json
        assert plot.keep_perturbation == 0.0  # "perturb_radius": 0.0
        assert model.variability_weight == 0.02  # "bal_ratio": 0.02
        assert callback(config, "TemporalMOO").epochs == 30  # "pareto_start_epoch": 30
        assert model.num_classes == 100
    assert config.data.init_args.imbalance_ratio == 100  # "cifar_imb_ratio": 0.01
    assert config.data.init_args.batch_size == 64  # paper §5.1: batch size of 64 on CIFAR-LT
    assert model.backbone == "resnet32"  # paper §5.1; configs: "ResNet-32"
    assert model.lr == 0.1  # configs: "lr": 1e-1
    assert model.momentum == 0.9  # configs: "momentum": 0.9
    assert model.weight_decay == 2e-4  # configs: "wc": 2.0e-4
    assert model.lr_schedule == "warmup_multistep"  # configs: "type": "warmup"
    assert model.warmup_epochs == 5  # configs: "warmup_epoch": 5
    assert list(model.milestones) == [160, 180]  # configs: "lr_step": [160, 180]
    assert model.lr_decay == 0.1  # configs: "lr_factor": 0.1
    if base == "crt_mixup":
        assert model.mixup_alpha == 1.0  # configs: "mixup_alpha": 1.0
        assert callback(config, "ClassifierRetraining").epoch == 200  # configs: "stage": 200
        assert config.trainer.max_epochs == 230  # configs: "max_epoch": 230
    else:
        assert config.trainer.max_epochs == 200  # paper appendix: ×0.1 at 160 and 180 of 200
    if base == "ldam_drw":  # LDAM-DRW (Cao et al., 2019), which PLOT's table 2 augments
        assert (model.ldam_max_m, model.ldam_s) == (0.5, 30.0)  # LDAM-DRW: max_m 0.5, s 30
        assert (model.drw_start_epoch, model.drw_beta) == (160, 0.9999)  # DRW at 160, β 0.9999


def test_plot_variability_weight_default_is_the_authors() -> None:
    from lightning_mtl.tasks.long_tail import LongTailClassifier

    # Cifar10_50.json / Cifar10_100.json: "bal_ratio": 0.01.
    assert LongTailClassifier().hparams.variability_weight == 0.01


# --- GCD -----------------------------------------------------------------------------------------

GCD_DATASETS = ("cub", "scars", "aircraft", "herbarium19")
# SimGCD's scripts/run_cub.sh, run_cars.sh, run_aircraft.sh, run_herb19.sh: --memax_weight.
SIMGCD_MEMAX = {"cub": 2.0, "scars": 1.0, "aircraft": 1.0, "herbarium19": 2.0}
# The EAGC authors' scripts/SimGCD/train_<dataset>.sh: --eep_weight.
EAGC_EEP = {"cub": 0.5, "scars": 3.0, "aircraft": 3.0, "herbarium19": 0.5}
CLASSES = {  # the SSB splits (SimGCD's data/get_datasets.py): (all, old)
    "cub": (200, 100),
    "scars": (196, 98),
    "aircraft": (100, 50),
    "herbarium19": (683, 341),
}


def _simgcd_common(config: Any, dataset: str) -> Any:
    model = config.model.init_args
    assert (model.num_classes, model.num_old) == CLASSES[dataset]
    assert model.trainable_blocks == 1  # run_*.sh: --grad_from_block 11 (of 12)
    assert model.weight_decay == 5e-5  # run_*.sh: --weight_decay 5e-5
    assert model.final_lr_ratio == 1e-3  # train.py: eta_min=args.lr * 1e-3
    assert (model.projection_hidden_dim, model.projection_dim) == (2048, 256)  # DINOHead
    assert model.teacher_temp_start == 0.07  # run_*.sh: --warmup_teacher_temp 0.07
    assert model.teacher_temp_end == 0.04  # run_*.sh: --teacher_temp 0.04
    assert model.teacher_warmup_epochs == 30  # run_*.sh: --warmup_teacher_temp_epochs 30
    assert model.sup_weight == 0.35  # run_*.sh: --sup_weight 0.35
    assert model.supcon_temperature == 0.07  # SupConLoss(temperature=0.07); PGI §4.1: τ 0.07
    assert config.data.init_args.batch_size == 128  # run_*.sh: --batch_size 128
    assert config.trainer.max_epochs == 200  # run_*.sh: --epochs 200
    return model


@pytest.mark.parametrize("dataset", GCD_DATASETS)
def test_simgcd_recipes(dataset: str) -> None:
    config = parsed(f"gcd_{dataset}_simgcd")
    model = _simgcd_common(config, dataset)
    assert model.strategy.class_path == "lightning_mtl.strategies.LinearScalarization"
    assert model.cls_weight == 0.35  # SimGCD: sup_weight · cls_loss, sup_weight 0.35
    assert model.lr == 0.1  # run_*.sh: --lr 0.1
    assert model.memax_weight == SIMGCD_MEMAX[dataset]
    assert model.use_swav is False and model.eagc is None


@pytest.mark.parametrize("dataset", GCD_DATASETS)
def test_pgi_recipes(dataset: str) -> None:
    config = parsed(f"gcd_{dataset}_pgi")
    model = _simgcd_common(config, dataset)  # PGI §4.1: SimGCD's (Vaze et al.'s) set-up
    pgi = model.strategy.init_args
    assert model.strategy.class_path == "lightning_mtl.strategies.PGI"
    assert pgi.alpha_min == 0.35  # PGI §4.1: "α is set to 0.35"
    assert model.lr == 0.1  # PGI §4.1: initial learning rate 0.1
    assert model.memax_weight == SIMGCD_MEMAX[dataset]
    # Eq. 2 balances the cross-entropy itself; eq. 13's λ_cls weighs it in the warm-up's sum.
    assert model.cls_weight == 1.0
    warmup = callback(config, "WarmupThenSwitch")
    assert warmup.warmup_strategy.init_args.weights == {"cls": 0.35}  # PGI §4.1: λ_cls 0.35
    assert model.warmup_epochs == warmup.warmup_epochs  # appendix A.2: LR rises in warm-up
    assert model.use_swav is True  # PGI table 5: SwAV regulariser
    assert model.swav_mask == "labeled"  # PGI §3.3 / table 6: Mask_lbl


@pytest.mark.parametrize("dataset", GCD_DATASETS)
def test_eagc_recipes(dataset: str) -> None:
    config = parsed(f"gcd_{dataset}_eagc")
    model = _simgcd_common(config, dataset)
    eagc = model.eagc.init_args
    assert model.strategy.class_path == "lightning_mtl.strategies.LinearScalarization"
    assert model.lr == 0.1  # train_<dataset>.sh: --lr_backbone 0.1
    assert model.head_lr == 1.0  # train_<dataset>.sh: --lr 1.0 (the projector's)
    assert model.feature_adapter is True  # --projection_head_nlayers 1: MLP_Head(768, 768)
    assert model.memax_weight == 1.0  # train_<dataset>.sh: --memax_weight 1
    assert model.reference_epochs == 30  # train_<dataset>.sh: --reference_epochs 30
    assert model.reference_batch_size == 32  # train_<dataset>.sh: --reference_batch_size 32
    assert model.reference_lr == 0.02  # train_<dataset>.sh: --reference_lr 0.02
    assert model.reference_weight_decay == 1e-4  # methods/SimGCD.py: --reference_weight_decay
    assert eagc.w_aga == 0.7  # train_<dataset>.sh: --aga_weight 0.7
    assert eagc.aperture == 2.0  # train_<dataset>.sh: --aperture 2.0
    assert eagc.w_eep == EAGC_EEP[dataset]
    assert eagc.momentum == 0.95  # methods/SimGCD.py: mu_momentum = 0.95
    assert eagc.feature_dim == 768  # ViT-B/16 CLS feature (args.feat_dim)
    assert model.use_swav is False


# --- RGB -----------------------------------------------------------------------------------------


def test_celeba_rgb_recipe() -> None:
    config = parsed("celeba_rgb")
    model = config.model.init_args
    rgb = model.strategy.init_args
    assert model.strategy.class_path == "lightning_mtl.strategies.RGB"
    assert rgb.alpha_steps == 50  # RGB paper, figure 3 / A.9: CelebA best at step 50
    assert rgb.proximity_weight == 1.0  # RGB paper §4: the "RGB variant" (λ = 1, step 50)
    assert rgb.momentum == 0.9  # RGB paper, appendix A.11: μ = 0.9 best
    assert model.scope == "shared"  # Algorithm 1: d_t in parameter space
    assert model.lr == 3e-4  # FAMO experiments/celeba/trainer.py: lr=3e-4 (Adam)
    assert model.weight_decay == 0.0  # FAMO: torch.optim.Adam(model.parameters(), lr=lr)
    assert config.data.init_args.batch_size == 256  # FAMO: batch_size=256
    assert config.trainer.max_epochs == 15  # FAMO: n_epochs=15


def test_nyuv2_rgb_recipe() -> None:
    config = parsed("nyuv2_rgb")
    model = config.model.init_args
    rgb = model.strategy.init_args
    assert rgb.alpha_steps == 5  # RGB paper table 1: "λ = 0 and α_steps = 5"
    assert rgb.proximity_weight == 0.0  # RGB paper table 1: λ = 0
    assert rgb.momentum == 0.9  # RGB paper, appendix A.11: μ = 0.9
    assert model.scope == "shared"  # Algorithm 1: d_t in parameter space
    # LibMTL's examples/nyu (which the RGB paper's NYUv2 code, ConsMTL's, builds on): Adam,
    # LibMTL/config.py defaults lr 1e-4, weight decay 1e-5, step scheduler every 100 epochs
    # (MTAN's StepLR(step_size=100, gamma=0.5)), 200 epochs; README: train_bs 8.
    assert model.lr == 1e-4
    assert model.weight_decay == 1e-5
    assert model.lr_step_epochs == 100
    assert config.data.init_args.batch_size == 8
    assert config.trainer.max_epochs == 200
