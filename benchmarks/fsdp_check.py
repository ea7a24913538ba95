"""The FSDP check that needs a GPU (Lightning runs FSDP only there): a loss weighting trains
under ``strategy="fsdp"`` and matches the same run under DDP on one device, and a Gramian
strategy is refused at ``fit`` start with the message that says what works instead.

    python benchmarks/fsdp_check.py          # on a CUDA machine (benchmarks/gpu_suite.sh fsdp)
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mtl import MultiObjectiveMixin
from lightning_mtl.strategies import MGDA, PGI, GradientBalancingStrategy


class TwoHeads(MultiObjectiveMixin, LightningModule):
    def __init__(self, strategy: GradientBalancingStrategy) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
        self.cls, self.rep = nn.Linear(64, 4), nn.Linear(64, 1)
        self.configure_balancing(strategy)

    def compute_objectives(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict:
        x, y = batch
        z = self.trunk(x)
        return {
            "cls": nn.functional.cross_entropy(self.cls(z), y),
            "rep": self.rep(z).pow(2).mean(),
        }

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def run(strategy: GradientBalancingStrategy, training_strategy: str) -> Tensor:
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(64, 16, generator=generator), torch.randint(0, 4, (64,)))
    model = TwoHeads(strategy)
    trainer = Trainer(
        accelerator="cuda",
        devices=1,
        strategy=training_strategy,
        max_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, DataLoader(data, batch_size=16))
    return torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()])


def main() -> None:
    sharded = run(PGI(alpha=0.3), "fsdp")
    plain = run(PGI(alpha=0.3), "ddp")
    difference = float((sharded - plain).abs().max())
    print(f"PGI under FSDP vs DDP, max weight difference: {difference:.3e}")
    assert difference < 1e-5, difference
    try:
        run(MGDA(), "fsdp")
    except ValueError as error:
        print(f"MGDA under FSDP refused: {error}")
    else:
        raise AssertionError("MGDA under FSDP was not refused")


if __name__ == "__main__":
    main()
