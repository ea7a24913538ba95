"""Pieces shared by the Gramian-based strategies (MGDA, CAGrad, UPGrad, IMTL-G, Aligned-MTL).

* :class:`Preference`: validated per-objective preference weights, as a device vector.
* :func:`solvable` and :func:`finite_or`: the documented fallback that keeps a failed solve
  from raising or writing NaN.
* :func:`symmetric_eigh` and :func:`significant`: an eigendecomposition of the Gramian that does
  not synchronise with the host (``torch.linalg.eigh`` checks LAPACK's error code on the host,
  which stalls a CUDA stream on every step), and the rank cut used with it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from lightning_mtl.strategies.base import device_vector
from lightning_mtl.strategies.code_paths import host_shortcuts

PreferenceSpec = Mapping[str, float] | Sequence[float] | None

SolveOn = Literal["host", "device"]
"""Where a Gramian strategy solves its ``[T, T]`` problem.

``"host"`` (the default): in float64 by compiled numerics (LAPACK, scipy's NNLS) after one
device→host copy of the Gramian (:func:`~lightning_mtl.strategies.host_solvers.solve_on_host`):
one synchronisation per step, which costs tens of microseconds, against the thousands of small
kernels a solver in torch ops launches on a GPU. ``"device"``: a fixed-count solver in torch ops
where the Gramian lives, with no host synchronisation — for steps captured in a CUDA graph, which
cannot read back to the host. Both give the same weights (``tests/test_solve_on.py``).
"""


def checked_solve_on(value: str) -> SolveOn:
    """``value`` if it is ``"host"`` or ``"device"``.

    Example::

        >>> checked_solve_on("host")
        'host'
    """
    if value not in ("host", "device"):
        raise ValueError(f"solve_on must be 'host' or 'device'; got {value!r}.")
    return value  # type: ignore[return-value]


class Preference:
    """Non-negative weights of the objectives, by name or in row order; ``1/T`` each by default.

    Args:
        values: a mapping from every objective name to its weight, a sequence in the
            objectives' order, or ``None`` for ``1/T`` each.
        owner: the strategy's name, for error messages.

    Raises:
        ValueError: when a weight is negative or not finite, or all weights are zero.

    Example::

        >>> preference = Preference({"a": 1.0, "b": 3.0}, "CAGrad")
        >>> preference.vector(("b", "a"), torch.zeros(1))
        tensor([3., 1.])
        >>> Preference(None, "CAGrad").vector(("a", "b"), torch.zeros(1))
        tensor([0.5000, 0.5000])
    """

    def __init__(self, values: PreferenceSpec, owner: str) -> None:
        self.owner = owner
        if values is None:
            self.values: dict[str, float] | tuple[float, ...] | None = None
            numbers: list[float] = []
        elif isinstance(values, Mapping):
            self.values = {str(name): float(value) for name, value in values.items()}
            numbers = list(self.values.values())
        else:
            self.values = tuple(float(value) for value in values)
            numbers = list(self.values)
        if values is not None and not numbers:
            raise ValueError(f"{owner} preference is empty; pass None for equal weights.")
        if any(not math.isfinite(value) or value < 0 for value in numbers):
            raise ValueError(f"{owner} preference weights must be finite and >= 0; got {values}.")
        if numbers and not any(value > 0 for value in numbers):
            raise ValueError(f"{owner} preference weights are all zero.")
        self._cached: dict[tuple[tuple[str, ...], torch.device, torch.dtype], Tensor] = {}

    def check(self, names: Sequence[str]) -> None:
        """Raise ``ValueError`` unless the preference gives one weight to each objective."""
        if isinstance(self.values, dict):
            unknown = sorted(set(self.values) - set(names))
            missing = sorted(set(names) - set(self.values))
            if unknown or missing:
                raise ValueError(
                    f"{self.owner} preference must name every objective {list(names)}; "
                    f"unknown: {unknown}, missing: {missing}."
                )
        elif isinstance(self.values, tuple) and len(self.values) != len(names):
            raise ValueError(
                f"{self.owner} preference has {len(self.values)} weights for "
                f"{len(names)} objectives {list(names)}."
            )

    def vector(self, names: tuple[str, ...], like: Tensor) -> Tensor:
        """The ``[T]`` weights in ``like``'s dtype and on its device, built once for each."""
        key = (names, like.device, like.dtype)
        if key not in self._cached:
            size = len(names)
            if self.values is None:
                vector = torch.full((size,), 1.0 / size, dtype=like.dtype, device=like.device)
            elif isinstance(self.values, dict):
                vector = device_vector([self.values[name] for name in names], like)
            else:
                vector = device_vector(self.values, like)
            self._cached[key] = vector.to(like.dtype)
        return self._cached[key]

    def __repr__(self) -> str:
        return repr(self.values)


def solvable(gramian: Tensor) -> tuple[Tensor, Tensor]:
    """The Gramian, or the identity in place of a non-finite one, and whether it was finite.

    The shared QP solvers return non-finite weights for a non-finite matrix, and their iterations
    would spend the step on it; they get a well-posed stand-in and the caller falls back.
    """
    finite = torch.isfinite(gramian).all()
    identity = torch.eye(gramian.shape[-1], dtype=gramian.dtype, device=gramian.device)
    return torch.where(finite, gramian, identity), finite


def finite_or(weights: Tensor, fallback: Tensor, valid: Tensor | None = None) -> Tensor:
    """``weights`` where every entry is finite (and ``valid`` holds), else ``fallback``: chosen on
    the device.

    Only a non-finite or overflowing Gramian makes the solvers fail; falling back keeps such a
    step from writing NaN when the gradients themselves are finite, while a non-finite Jacobian
    still makes the update ``weights @ J`` non-finite for the mixed-precision loss scaler.
    """
    good = torch.isfinite(weights).all()
    if valid is not None:
        good = good & valid
    return torch.where(good, weights, fallback.to(weights.dtype))


def row_norms(gramian: Tensor) -> Tensor:
    """``‖g_t‖`` from the Gramian's diagonal; rounding cannot make them NaN."""
    return gramian.diagonal(dim1=-2, dim2=-1).clamp_min(0.0).sqrt()


def symmetric_eigh(matrix: Tensor, sweeps: int | None = None) -> tuple[Tensor, Tensor]:
    """Eigenvalues and eigenvectors of a symmetric ``[T, T]`` matrix, without host synchronisation.

    On the CPU, for finite input, ``torch.linalg.eigh`` (LAPACK; eigenvalues ascending): its
    error check reads nothing from a device. Elsewhere (``eigh`` would read its error status on
    the host), and for non-finite input or the rare input LAPACK cannot converge on, the Jacobi
    method :func:`jacobi_eigh`, which returns non-finite values for the callers' fallbacks
    instead of raising. Compute in float64.

    Returns:
        ``(eigenvalues [T], eigenvectors [T, T])`` with ``matrix = V diag(λ) Vᵀ``.

    Example::

        >>> values, vectors = symmetric_eigh(torch.tensor([[2.0, 1.0], [1.0, 2.0]]).double())
        >>> values.sort().values
        tensor([1., 3.], dtype=torch.float64)
    """
    if host_shortcuts(matrix) and bool(torch.isfinite(matrix).all()):
        with contextlib.suppress(torch.linalg.LinAlgError):
            return torch.linalg.eigh(matrix)
    return jacobi_eigh(matrix, sweeps)


def jacobi_eigh(matrix: Tensor, sweeps: int | None = None) -> tuple[Tensor, Tensor]:
    """Eigenvalues and eigenvectors of a symmetric ``[T, T]`` matrix by a cyclic Jacobi method in
    parallel (round-robin) order, with a fixed amount of work and no host read.

    Each round rotates ``⌈T/2⌉`` disjoint index pairs at once by one orthogonal ``R``
    (``A ← Rᵀ A R``, ``V ← V R``), so that a sweep over all pairs takes ``T − 1`` rounds of 13
    small ops. Jacobi methods converge quadratically and, once the off-diagonal part has
    vanished, rotate by zero, so a fixed number of sweeps leaves converged matrices unchanged.
    The default, ``2⌈log₂ T⌉ + min(⌈log₂ T⌉, 5) + 1`` (``2⌈log₂ T⌉ + 6`` from ``T = 17`` on),
    reaches a reconstruction error below 1e-12 of the largest eigenvalue in float64 (measured on
    30 matrices each at T = 2, 3, 16, 41 and 64: random, repeated and 12-decade spectra need at
    most 1, 4, 11, 17 and 19 sweeps, for a default of 4, 7, 13, 18 and 18; at T = 64, 2 of the
    30 repeated spectra are left at up to 1.7e-12; the earlier ``⌈log₂ T⌉ + 4`` = 10 left errors
    up to 1e-8 of the largest eigenvalue). The eigenvalues are the Rayleigh quotients
    ``vᵀ matrix v`` of the eigenvectors, not sorted; compute in float64.

    Returns:
        ``(eigenvalues [T], eigenvectors [T, T])`` with ``matrix = V diag(λ) Vᵀ``.

    Example::

        >>> values, vectors = jacobi_eigh(torch.tensor([[2.0, 1.0], [1.0, 2.0]]).double())
        >>> values.sort().values
        tensor([1., 3.], dtype=torch.float64)
    """
    size = matrix.shape[-1]
    levels = math.ceil(math.log2(max(size, 2)))
    count = sweeps if sweeps is not None else 2 * levels + min(levels, 5) + 1
    width = size + size % 2
    rounds = _JacobiRounds.build(width, matrix)
    # An odd size gets a decoupled zero row and column, so every round pairs all indices.
    rotated = torch.nn.functional.pad(matrix, (0, width - size, 0, width - size))
    vectors = torch.eye(width, dtype=matrix.dtype, device=matrix.device)
    for _ in range(count):
        for read, write in zip(rounds.reads, rounds.writes, strict=True):
            rotation = _rotation(_jacobi_angles(rotated, read, rounds.zero), write, rounds)
            rotated = rotation.T @ rotated @ rotation
            vectors = vectors @ rotation
    # The angles skip non-finite entries, which therefore stay in ``rotated``: they mark a
    # non-finite input (or an overflow) that the callers' fallbacks must see in the result.
    vectors = vectors[:size, :size].where(torch.isfinite(rotated).all(), torch.nan)
    return (vectors * (matrix @ vectors)).sum(0), vectors


def significant(eigenvalues: Tensor, dtype: torch.dtype) -> Tensor:
    """Which eigenvalues of a Gramian held in ``dtype`` are above its rounding noise.

    The cut ``λ > T · eps(dtype) · λ_max`` is the rank tolerance of Aligned-MTL's code (and of
    ``torch.linalg.pinv``): below it an eigen-direction of a Gramian held in ``dtype`` is noise.
    """
    cut = eigenvalues.amax() * len(eigenvalues) * torch.finfo(dtype).eps
    return eigenvalues > cut


def _round_robin(width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``[width − 1, width / 2]`` index pairs: each row pairs every index once, and over the
    rows every pair of indices meets once (the circle method), built on the device."""
    rounds = torch.arange(width - 1, device=device)[:, None]
    seats = torch.arange(width, device=device)[None, :]
    players = torch.where(seats == 0, 0, 1 + (seats - 1 + rounds) % (width - 1))
    half = width // 2
    return players[:, :half], players[:, half:].flip(-1)


class _JacobiRounds(NamedTuple):
    """What the rounds of :func:`jacobi_eigh` reuse, built once per call on the device.

    For round ``r``, ``reads[r]`` holds the flat indices ``[3, width / 2]`` of ``a_pp, a_qq,
    a_pq`` of its pairs, and ``writes[r]`` the rows and columns ``[4, width / 2]`` of ``cos θ,
    cos θ, sin θ, −sin θ`` in its rotation, that is ``sin(phases + halves · 2θ)``.
    """

    reads: tuple[Tensor, ...]
    writes: tuple[tuple[Tensor, Tensor], ...]
    phases: Tensor
    halves: Tensor
    zero: Tensor
    blank: Tensor

    @classmethod
    def build(cls, width: int, like: Tensor) -> _JacobiRounds:
        """The rounds for a ``[width, width]`` matrix of ``like``'s dtype and device."""
        firsts, seconds = _round_robin(width, like.device)
        reads = torch.stack((firsts * (width + 1), seconds * (width + 1), firsts * width + seconds))
        rows = torch.stack((firsts, seconds, firsts, seconds), 1)
        columns = torch.stack((firsts, seconds, seconds, firsts), 1)
        # Filled by kernels: torch.tensor(..., device="cuda") would block on a host copy.
        phases = torch.zeros((4, 1), dtype=like.dtype, device=like.device)
        phases[:2].fill_(math.pi / 2)
        halves = torch.full((4, 1), 0.5, dtype=like.dtype, device=like.device)
        halves[3].fill_(-0.5)
        return cls(
            reads=reads.unbind(1),
            writes=tuple(zip(rows.unbind(), columns.unbind(), strict=True)),
            phases=phases,
            halves=halves,
            zero=torch.zeros((), dtype=like.dtype, device=like.device),
            blank=torch.zeros((width, width), dtype=like.dtype, device=like.device),
        )


def _jacobi_angles(matrix: Tensor, read: Tensor, zero: Tensor) -> Tensor:
    """``2θ`` for each pair ``(p, q)``: the rotation by ``θ``, at most 45°, zeroes ``a_pq``."""
    diagonal_p, diagonal_q, coupling = torch.take(matrix, read).unbind()
    # tan 2θ = 2 a_pq / (a_qq − a_pp), doubled and divided by one kernel.
    tangent = torch.addcdiv(zero, coupling, diagonal_q - diagonal_p, value=2.0)
    # atan, unlike atan2, keeps |2θ| ≤ 90° with no sign fold. A NaN tangent is 0/0 (a_pq = 0 on
    # equal diagonal entries: nothing to rotate) or non-finite input; ±inf (a_pp = a_qq) and
    # its largest finite stand-in both give the 45° rotation.
    return torch.atan(torch.nan_to_num(tangent))


def _rotation(doubled: Tensor, write: tuple[Tensor, Tensor], rounds: _JacobiRounds) -> Tensor:
    """The orthogonal ``R`` that rotates each pair ``(p, q)`` of a round by its angle."""
    # One sine gives all four entries (cos θ = sin(θ + π/2)), exactly 1 and 0 for θ = 0.
    entries = torch.sin(torch.addcmul(rounds.phases, rounds.halves, doubled))
    return rounds.blank.index_put(write, entries)
