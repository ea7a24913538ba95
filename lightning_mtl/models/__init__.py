"""Models: the embedded default recipe's small CNN and its multi-objective module."""

from lightning_mtl.models.digits import DigitsEncoder, DigitsMultiObjective

__all__ = ["DigitsEncoder", "DigitsMultiObjective"]
