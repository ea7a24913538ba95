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


def equilibrium_terms(original: Tensor, adjusted: Tensor) -> dict[str, Tensor]:
    """The multi-task equilibrium diagnostics of the RGB paper (appendix A.8, eq. 3-6).

    * ``conflict``: mean over pairs of ``(1 − cos(r_i, r_j)) / 2`` of the adjusted gradients.
    * ``proximity``: mean of ``‖r̂_i − ḡ_i‖² / 4`` between unit adjusted and unit original ones.
    * ``condition_number``: ``λ_max / λ_min`` of the PCA of the unit adjusted gradients, i.e. of
      their cosine matrix (the paper's "pairwise gradient conflict matrix" is not spelled out:
      this is our reading; eigenvalues below ``1e-12`` count as ``1e-12``).
    * ``balance``: ``sqrt(1/(1+conflict) · 1/(1+proximity) · 1/(1+condition_number))``.

    Example::

        >>> terms = equilibrium_terms(torch.eye(2), torch.eye(2))
        >>> {name: round(float(value), 4) for name, value in terms.items()}
        {'conflict': 0.5, 'proximity': 0.0, 'condition_number': 1.0, 'balance': 0.5774}
    """
    if original.shape != adjusted.shape or original.ndim != 2 or original.shape[0] < 2:
        raise ValueError(
            "original and adjusted must both be [T, D] with T >= 2; got "
            f"{tuple(original.shape)} and {tuple(adjusted.shape)}."
        )
    count = original.shape[0]
    cosines = cosine_matrix(adjusted).double()
    pairs = torch.triu_indices(count, count, offset=1, device=cosines.device)
    conflict = ((1 - cosines[pairs[0], pairs[1]]) / 2).mean()
    proximity = ((unit_rows(adjusted) - unit_rows(original)).pow(2).sum(1) / 4).mean().double()
    eigenvalues = torch.linalg.eigvalsh(cosines).clamp_min(1e-12)
    condition = eigenvalues[-1] / eigenvalues[0]
    balance = torch.sqrt(1 / (1 + conflict) / (1 + proximity) / (1 + condition))
    return {
        "conflict": conflict,
        "proximity": proximity,
        "condition_number": condition,
        "balance": balance,
    }


__all__ = ["cosine_matrix", "cosines_to", "degrees", "equilibrium_terms", "unit_rows"]
