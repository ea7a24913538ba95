"""Angles between gradients: the geometry shared by callbacks and strategies."""

from __future__ import annotations

import torch
from torch import Tensor

_TINY = 1e-12


def unit_rows(matrix: Tensor) -> Tensor:
    """Rows scaled to unit norm; zero rows stay zero (their angle to anything reads as 90°).

    Example::

        >>> unit_rows(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """
    wide = matrix.float()
    return wide / wide.norm(dim=-1, keepdim=True).clamp_min(_TINY)


def cosine_matrix(jacobian: Tensor) -> Tensor:
    """``[T, T]`` cosines between the rows of a ``[T, D]`` Jacobian.

    Example::

        >>> cosine_matrix(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
        tensor([[ 1.0000, -0.7071],
                [-0.7071,  1.0000]])
    """
    rows = unit_rows(jacobian)
    return (rows @ rows.T).clamp(-1.0, 1.0)


def cosines_to(jacobian: Tensor, vector: Tensor) -> Tensor:
    """``[T]`` cosines between each row of ``jacobian`` and ``vector``."""
    return (unit_rows(jacobian) @ unit_rows(vector.unsqueeze(0)).squeeze(0)).clamp(-1.0, 1.0)


def degrees(cosines: Tensor) -> Tensor:
    """Angles in degrees from cosines.

    Example::

        >>> degrees(torch.tensor([1.0, 0.0, -1.0]))
        tensor([  0.,  90., 180.])
    """
    return torch.rad2deg(torch.arccos(cosines.clamp(-1.0, 1.0)))


__all__ = ["cosine_matrix", "cosines_to", "degrees", "unit_rows"]
