"""Energy-aware gradient coordinator (EAGC) for generalized category discovery, from "The Devil
Is in Gradient Entanglement: Energy-Aware Gradient Coordinator for Robust Generalized Category
Discovery" (CVPR 2026; "the EAGC paper" below).

EAGC fights *gradient entanglement* in GCD: the gradients of the unlabeled objectives distort the
known-class structure learned from the labeled rows. It edits the gradient of the backbone's
output features ``z`` (``[B, D]``), not the parameter gradients, with two parts:

* **AGA** (anchor-based gradient alignment), labeled rows: add ``(w_aga / (N·D))·(z − z_ref)``,
  the gradient of the L2 pull ``(w_aga / (2·N·D))·‖z_lab − z_ref,lab‖²`` of the labeled features
  toward those of a frozen *reference* model (:class:`ReferenceAnchor`).
* **EEP** (energy-aware elastic projection), unlabeled rows: ``g_i ← g_i − β_i·g_i C`` where
  ``C = R(R + a⁻²I)⁻¹`` is the conceptor of the labeled reference features (:func:`conceptor`),
  ``E(z) = clamp(zᵀCz / ‖z‖², 0, 1)`` the energy of a feature in the known-class subspace
  (:func:`feature_energy`), ``μ`` a running mean of the labeled energies and
  ``β_i = w_eep·clamp(1 − E(z_i)/μ, 0, 1)``: the projection is strong for low-energy (likely
  novel) samples and fades for samples as energetic as the labeled ones (likely known classes).

Recipe (as in the authors' code): train a reference (backbone + a head over the labeled classes)
on the labeled data only with cross-entropy; start the main backbone from its weights; freeze
the reference; compute ``C`` and ``μ`` from the reference features of all labeled training
images (:meth:`EAGC.initialise`); then in every step::

    z = backbone(x)
    z = eagc(z, anchor(x), is_labeled)   # identity value, edited gradient
    losses = ...                         # any GCD losses built on z

Because the edit is an identity-forward autograd function, an ordinary backward pass of any loss
built on the returned features carries the edited gradient into the backbone: no per-objective
gradients are needed. With :class:`~lightning_mtl.MultiObjectiveMixin`:

* loss-based strategies (e.g. ``LinearScalarization``, PGI) do one backward pass, so the edit is
  applied exactly once, to the feature gradient of the weighted total;
* ``scope="representation"`` with the *returned* features as the representation: the strategy
  balances the unedited per-objective feature gradients and EAGC edits the balanced direction on
  its way into the backbone (one pass through EAGC's backward);
* Gramian/Jacobian strategies on parameters: each objective's gradient goes through EAGC. EEP is
  linear in the incoming gradient, but AGA adds a constant term, so every objective's gradient
  carries the full AGA pull (it acts like a loss term added to each objective).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from lightning_mtl.engine.precision import full_precision

__all__ = ["EAGC", "ReferenceAnchor", "conceptor", "feature_energy"]

_CHUNK_ROWS = 8192
"""Rows per block when accumulating ``ZᵀZ``: bounds the float64 copy of the features."""


def _check_matrix(name: str, tensor: Tensor) -> None:
    """Raise ``ValueError`` unless ``tensor`` is a 2-D floating-point ``[rows, D]`` matrix."""
    if tensor.dim() != 2:
        raise ValueError(f"`{name}` must be 2-D [rows, D], got shape {tuple(tensor.shape)}.")
    if not tensor.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got dtype {tensor.dtype}.")


def _check_weight(name: str, value: float, *, positive: bool = False) -> float:
    """``value`` as a float if finite and ≥ 0 (> 0 with ``positive``), else ``ValueError``."""
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else "≥ 0"
        raise ValueError(f"`{name}` must be finite and {bound}, got {value}.")
    return value


def conceptor(features: Tensor, aperture: float = 2.0) -> Tensor:
    """Conceptor ``C = R(R + a⁻²I)⁻¹`` of a feature set, ``R = ZᵀZ / N``.

    ``C`` is a soft projector onto the subspace the features occupy: with the eigen-decomposition
    ``R = U diag(λ) Uᵀ`` it is ``U diag(λ / (λ + a⁻²)) Uᵀ``, so directions of large variance get
    weights near 1 and unused directions weights near 0 (all in ``[0, 1)``). As in the authors'
    code, ``R`` is the uncentred second-moment matrix ``ZᵀZ / N`` of the features as given (no
    mean subtraction, no normalisation). ``R`` and ``R + a⁻²I`` commute, so ``C`` is computed as
    ``solve(R + a⁻²I, R)`` and symmetrised to remove round-off asymmetry.

    Cost: ``N·D²`` multiply-adds for ``R`` (accumulated in blocks of rows, so the float64 copy
    is at most 8192 × ``D``), ``O(D³)`` for the solve and ``D²`` memory; for ``D = 768`` (ViT-B)
    that is a 768 × 768 matrix, 4.7 MB in float64, computed once before training.

    Args:
        features: ``[N, D]`` features, e.g. the reference model's features of all labeled
            training images.
        aperture: aperture ``a`` (> 0); a larger aperture lets ``C`` cover weaker directions.
            Default 2, as in the authors' code.

    Returns:
        ``[D, D]`` symmetric matrix, computed in float64 and cast to the features' dtype (at
        least float32), on the features' device.

    Raises:
        ValueError: If ``features`` is not a non-empty 2-D floating-point matrix or the
            aperture is not positive and finite.

    Example::

        >>> import torch
        >>> z = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])  # R = diag(4, 0)
        >>> conceptor(z, aperture=2.0)  # 4 / (4 + 1/4) on the used direction, 0 elsewhere
        tensor([[0.9412, 0.0000],
                [0.0000, 0.0000]])
    """
    _check_matrix("features", features)
    aperture = _check_weight("aperture", aperture, positive=True)
    num_rows, dim = features.shape
    if num_rows == 0 or dim == 0:
        raise ValueError(f"`features` must be non-empty, got shape {tuple(features.shape)}.")
    # MPS has no float64; the one-off D×D computation is cheap enough on the CPU.
    device = torch.device("cpu") if features.device.type == "mps" else features.device
    with full_precision(device):
        gram = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        for start in range(0, num_rows, _CHUNK_ROWS):
            block = features[start : start + _CHUNK_ROWS].to(device, torch.float64)
            gram += block.T @ block
        moment = gram / num_rows
        eye = torch.eye(dim, dtype=torch.float64, device=device)
        matrix = torch.linalg.solve(moment + aperture**-2 * eye, moment)
        matrix = 0.5 * (matrix + matrix.T)
    return matrix.to(features.device, torch.promote_types(features.dtype, torch.float32))


def feature_energy(z: Tensor, C: Tensor) -> Tensor:
    """Energy ``E(z) = clamp(zᵀCz / ‖z‖², 0, 1)`` of each row of ``z`` under the conceptor ``C``.

    The share of a feature's squared norm that lies in the conceptor's subspace: near 1 for a
    feature like the labeled (known-class) ones, near 0 for one orthogonal to them. It does not
    depend on the feature's norm. A zero row has energy 0. The clamp guards round-off (a
    conceptor's eigenvalues lie in ``[0, 1)``, so the ratio does too in exact arithmetic).
    Computed with autocast disabled in at least float32.

    Args:
        z: ``[B, D]`` features.
        C: ``[D, D]`` conceptor, see :func:`conceptor`.

    Returns:
        ``[B]`` energies in ``[0, 1]`` (float32; float64 if an input is float64).

    Raises:
        ValueError: If the shapes do not match or an input is not floating point.

    Example::

        >>> import torch
        >>> C = torch.diag(torch.tensor([1.0, 0.5, 0.0]))
        >>> feature_energy(torch.tensor([[3.0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]]), C)
        tensor([1.0000, 0.5000, 0.7500, 0.0000])
    """
    _check_matrix("z", z)
    dim = z.shape[1]
    if C.shape != (dim, dim) or not C.is_floating_point():
        raise ValueError(
            f"`C` must be a floating-point [D, D] = [{dim}, {dim}] matrix to match `z`, got "
            f"shape {tuple(C.shape)} and dtype {C.dtype}."
        )
    dtype = torch.promote_types(torch.promote_types(z.dtype, C.dtype), torch.float32)
    with full_precision(z.device):
        rows = z.to(dtype)
        quadratic = ((rows @ C.to(dtype)) * rows).sum(dim=1)
        squared_norm = (rows * rows).sum(dim=1)
        # A tiny floor (not eps) only matters for a zero row, whose numerator is 0 too: E = 0.
        return (quadratic / squared_norm.clamp(min=torch.finfo(dtype).tiny)).clamp(0.0, 1.0)


class _FeatureGradientEdit(torch.autograd.Function):
    """Identity forward; backward ``g ← g − β·gC`` (EEP) then ``g ← g + pull`` (AGA).

    ``beta`` (``[B]``, zero on labeled rows) and ``pull`` (``[B, D]``, zero on unlabeled rows)
    are computed in the forward pass without a graph; either may be ``None`` (part disabled).
    """

    @staticmethod
    def forward(
        ctx: Any, z: Tensor, matrix: Tensor | None, beta: Tensor | None, pull: Tensor | None
    ) -> Tensor:
        ctx.save_for_backward(matrix, beta, pull)
        # view_as: an identity that is still a distinct output node of this function.
        return z.view_as(z)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        matrix, beta, pull = ctx.saved_tensors
        with full_precision(grad.device):
            edited = grad.float()
            if beta is not None:
                edited = edited - beta[:, None] * (edited @ matrix)
            if pull is not None:
                edited = edited + pull
        return edited.to(grad.dtype), None, None, None


def _sync_initialised_flag(module: nn.Module, incompatible_keys: object) -> None:
    """After ``load_state_dict``, mirror the loaded ``initialised`` buffer on the host."""
    # One host synchronisation per load, so that forward never needs one.
    module._initialised = bool(module.initialised)  # type: ignore[assignment]


class EAGC(nn.Module):
    """Energy-aware gradient coordinator: edits the gradient of the backbone features.

    ``forward(z, z_ref, is_labeled)`` returns ``z`` unchanged; in the backward pass the gradient
    ``g`` of the returned features is edited row by row (in float32, returned in ``g``'s dtype):

    * EEP, unlabeled rows: ``g_i ← g_i − β_i·g_i C``, ``β_i = w_eep·clamp(1 − E(z_i)/μ, 0, 1)``;
    * then AGA, labeled rows: ``g_i ← g_i + (w_aga / (N·D))·(z_i − z_ref,i)``, the gradient of
      ``(w_aga / (2·N·D))·Σ_lab ‖z_i − z_ref,i‖²``. ``N`` is the number of labeled *rows* of the
      ``z`` passed in (with two stacked views each labeled image counts twice) on this process;
      a batch without labeled rows gets no AGA term (``N`` is clamped to 1 and every row's
      coefficient is 0), not a NaN.

    The two parts touch disjoint rows, so their order only matters in spirit (EEP first, as in
    the authors' code). ``β`` and the pull are computed in the forward pass from the detached
    features, so backward is two small matrix products. With ``w_eep > 1`` (3.0 on Cars and
    Aircraft) a low-energy row's component in the conceptor subspace is pushed past zero (the
    projection over-shoots), as in the authors' scripts.

    State (buffers, so it moves and checkpoints with the model, and strict ``load_state_dict``
    works on a freshly constructed module): ``conceptor`` ``[D, D]``, ``energy_mean`` (``μ``, a
    scalar) and ``initialised`` (bool). In training mode each forward updates
    ``μ ← m·μ + (1 − m)·mean_lab E(z)`` from the labeled rows (skipped without labeled rows),
    *before* ``β`` is computed, so the current batch counts in the ``μ`` that scales it.
    Under DDP every process updates its own ``μ``; with ``broadcast_buffers=True`` (default)
    rank 0's value is what all processes use at the next step.

    The edit applies whenever grad mode is on and ``z`` requires grad (in eval mode too); ``μ``
    is only updated in training mode. No host synchronisation: masks enter by multiplication
    and ``torch.where``.

    Args:
        feature_dim: feature dimension ``D`` (sizes the buffers).
        w_aga: AGA weight. Default 0.7 (the authors' scripts).
        w_eep: EEP weight. Default 0.5 (CUB); the authors use 3.0 on Stanford Cars and
            FGVC-Aircraft.
        aperture: conceptor aperture ``a`` used by :meth:`initialise`. Default 2.
        momentum: momentum ``m`` of the running mean ``μ`` (in ``[0, 1]``). Default 0.95.
        enable_aga: apply AGA (a plain attribute; switch it at any time).
        enable_eep: apply EEP (needs :meth:`initialise` or a loaded state first).

    Raises:
        ValueError: If an argument is out of range.

    Example::

        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> eagc = EAGC(feature_dim=4)
        >>> eagc.initialise(torch.randn(32, 4))  # reference features of the labeled set
        >>> z = torch.randn(6, 4, requires_grad=True)
        >>> z_ref = z.detach() + 0.1
        >>> is_labeled = torch.tensor([True, True, False, False, False, False])
        >>> out = eagc(z, z_ref, is_labeled)
        >>> torch.equal(out, z)
        True
        >>> out.sum().backward()
        >>> torch.allclose(z.grad[:2], 1 + 0.7 / (2 * 4) * (z - z_ref)[:2])  # AGA, N = 2
        True
    """

    conceptor: Tensor
    energy_mean: Tensor
    initialised: Tensor

    def __init__(
        self,
        feature_dim: int,
        w_aga: float = 0.7,
        w_eep: float = 0.5,
        aperture: float = 2.0,
        momentum: float = 0.95,
        enable_aga: bool = True,
        enable_eep: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"`feature_dim` must be a positive int, got {feature_dim!r}.")
        self.feature_dim = feature_dim
        self.w_aga = _check_weight("w_aga", w_aga)
        self.w_eep = _check_weight("w_eep", w_eep)
        self.aperture = _check_weight("aperture", aperture, positive=True)
        self.momentum = _check_weight("momentum", momentum)
        if self.momentum > 1:
            raise ValueError(f"`momentum` must be in [0, 1], got {momentum}.")
        self.enable_aga = enable_aga
        self.enable_eep = enable_eep
        self.register_buffer("conceptor", torch.zeros(feature_dim, feature_dim))
        self.register_buffer("energy_mean", torch.zeros(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        # Host-side mirror of `initialised`: forward branches on it without a synchronisation.
        self._initialised = False
        self.register_load_state_dict_post_hook(_sync_initialised_flag)

    @torch.no_grad()
    def initialise(self, reference_features: Tensor) -> None:
        """Compute ``C`` and the initial ``μ`` from the reference features of the labeled set.

        ``C = conceptor(reference_features, aperture)`` and ``μ`` is the mean energy of those
        same features under ``C``. Call it once after training the reference model, with its
        features of *all* labeled training images (e.g. collected under ``torch.no_grad``).

        Args:
            reference_features: ``[N, D]`` features, ``D = feature_dim``.

        Raises:
            ValueError: If the features are not a non-empty ``[N, feature_dim]`` matrix.

        Example::

            >>> import torch
            >>> eagc = EAGC(feature_dim=2)
            >>> eagc.initialise(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
            >>> eagc.energy_mean  # R = diag(2, 0.5): (2 / 2.25 + 0.5 / 0.75) / 2
            tensor(0.7778)
        """
        _check_matrix("reference_features", reference_features)
        if reference_features.shape[1] != self.feature_dim:
            raise ValueError(
                f"`reference_features` must have {self.feature_dim} columns (feature_dim), got "
                f"shape {tuple(reference_features.shape)}."
            )
        matrix = conceptor(reference_features, self.aperture)
        energies = feature_energy(reference_features, matrix)
        self.conceptor.copy_(matrix)
        self.energy_mean.copy_(energies.mean())
        self.initialised.fill_(True)
        self._initialised = True

    def forward(
        self,
        z: Tensor,
        z_ref: Tensor,
        is_labeled: Tensor,
        *,
        loss_scale: Tensor | float | None = None,
    ) -> Tensor:
        """Return ``z`` (same value) whose gradient will be edited; update ``μ`` in training.

        Args:
            z: ``[B, D]`` backbone features (requires grad in training).
            z_ref: ``[B, D]`` reference features of the same inputs (no gradient flows to them).
            is_labeled: ``[B]`` bool (or integer, nonzero = labeled) mask of the labeled rows.
            loss_scale: the factor the loss is multiplied by before backward, e.g. the
                ``GradScaler`` scale under ``16-mixed`` (a tensor, to avoid a host sync). The
                incoming gradient is then scaled but AGA's additive term is not, so it is
                multiplied by this factor to survive unscaling. ``None`` for 32-bit and bf16.

        Returns:
            ``z``'s value; a new autograd node when the edit applies, else ``z`` itself.

        Raises:
            ValueError: If the shapes or dtypes are wrong.
            RuntimeError: If EEP is enabled and would be applied before :meth:`initialise`.
        """
        labeled = self._check_inputs(z, z_ref, is_labeled)
        edit = torch.is_grad_enabled() and z.requires_grad and (self.enable_aga or self.enable_eep)
        project = edit and self.enable_eep
        if project and not self._initialised:
            raise RuntimeError(
                "EAGC's EEP needs the conceptor and μ: call initialise(reference_features) with "
                "the reference features of the labeled set (or load a state dict) first, or "
                "set enable_eep=False."
            )
        update = self.training and self._initialised
        if not (edit or update):
            return z
        with torch.no_grad(), full_precision(z.device):
            rows = z.detach().float()
            mean = self.energy_mean.float()
            energy = feature_energy(rows, self.conceptor) if (project or update) else None
            if update:
                assert energy is not None
                mean = self._updated_mean(energy, labeled, mean)
                self.energy_mean.copy_(mean)
            if not edit:
                return z
            beta = self._beta(energy, labeled, mean) if project else None
            pull = self._pull(rows, z_ref, labeled, loss_scale) if self.enable_aga else None
        matrix = self.conceptor.float() if project else None
        return _FeatureGradientEdit.apply(z, matrix, beta, pull)

    def _check_inputs(self, z: Tensor, z_ref: Tensor, is_labeled: Tensor) -> Tensor:
        """Validate shapes and dtypes; return the labeled mask as float32 on ``z``'s device."""
        _check_matrix("z", z)
        if z.shape[1] != self.feature_dim:
            raise ValueError(
                f"`z` must have {self.feature_dim} columns (feature_dim), got shape "
                f"{tuple(z.shape)}."
            )
        if z_ref.shape != z.shape or not z_ref.is_floating_point():
            raise ValueError(
                f"`z_ref` must be a floating-point tensor shaped like `z` {tuple(z.shape)}, got "
                f"shape {tuple(z_ref.shape)} and dtype {z_ref.dtype}."
            )
        if is_labeled.shape != (z.shape[0],):
            raise ValueError(
                f"`is_labeled` must have shape [B] = ({z.shape[0]},), got "
                f"{tuple(is_labeled.shape)}."
            )
        if is_labeled.is_floating_point() or is_labeled.is_complex():
            raise ValueError(f"`is_labeled` must be a bool mask, got dtype {is_labeled.dtype}.")
        mask = is_labeled if is_labeled.dtype == torch.bool else is_labeled != 0
        return mask.to(device=z.device, dtype=torch.float32)

    def _updated_mean(self, energy: Tensor, labeled: Tensor, mean: Tensor) -> Tensor:
        """``m·μ + (1 − m)·mean_lab E`` from the labeled rows; ``μ`` if there are none."""
        count = labeled.sum()
        batch_mean = (energy * labeled).sum() / count.clamp(min=1.0)
        blended = self.momentum * mean + (1.0 - self.momentum) * batch_mean
        return torch.where(count > 0, blended, mean)

    def _beta(self, energy: Tensor | None, labeled: Tensor, mean: Tensor) -> Tensor:
        """``β = w_eep·clamp(1 − E/μ, 0, 1)`` on unlabeled rows, 0 on labeled rows."""
        assert energy is not None
        # A tiny floor keeps a degenerate μ = 0 from producing NaN (then β = 0 unless E = 0).
        ratio = energy / mean.clamp(min=torch.finfo(mean.dtype).tiny)
        return self.w_eep * (1.0 - ratio).clamp(0.0, 1.0) * (1.0 - labeled)

    def _pull(
        self, rows: Tensor, z_ref: Tensor, labeled: Tensor, loss_scale: Tensor | float | None
    ) -> Tensor:
        """AGA's term ``(w_aga / (N·D))·(z − z_ref)`` on labeled rows, 0 elsewhere."""
        count = labeled.sum().clamp(min=1.0)  # no labeled row: every coefficient is 0 anyway
        coefficient = self.w_aga / (count * self.feature_dim) * labeled
        pull = coefficient[:, None] * (rows - z_ref.detach().float())
        if loss_scale is not None:
            scale = torch.as_tensor(loss_scale, dtype=torch.float32, device=pull.device)
            pull = pull * scale
        return pull

    def extra_repr(self) -> str:
        """Show the hyper-parameters in ``print(module)``."""
        return (
            f"feature_dim={self.feature_dim}, w_aga={self.w_aga}, w_eep={self.w_eep}, "
            f"aperture={self.aperture}, momentum={self.momentum}, "
            f"enable_aga={self.enable_aga}, enable_eep={self.enable_eep}"
        )


class ReferenceAnchor(nn.Module):
    """A frozen reference backbone producing the anchor features ``z_ref`` under ``no_grad``.

    The wrapped module's parameters get ``requires_grad=False`` and it stays in eval mode even
    when the enclosing model is switched to training (its batch-norm statistics and dropout must
    not change). It is a registered submodule, so it moves with the model and is saved in
    checkpoints (the reference is needed again on resume). Its parameters still appear in
    ``model.parameters()``: keep them out of the optimizer with
    ``[p for p in model.parameters() if p.requires_grad]`` (stock PyTorch optimizers would skip
    them anyway, as their ``.grad`` stays ``None``). Under DDP, parameters that do not require
    grad are synchronised once at wrap time, not every step. Lightning warns at the start of
    ``fit`` that modules are in eval mode: these are the anchor's, as intended.

    Args:
        backbone: the reference backbone; it is frozen *in place*. Use :meth:`from_backbone` to
            freeze a copy and leave the original trainable.

    Example::

        >>> import torch
        >>> backbone = torch.nn.Linear(3, 2)
        >>> anchor = ReferenceAnchor.from_backbone(backbone)
        >>> anchor.train().training, backbone.weight.requires_grad
        (False, True)
        >>> anchor(torch.randn(4, 3)).requires_grad
        False
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise ValueError(f"`backbone` must be an nn.Module, got {type(backbone).__name__}.")
        self.backbone = backbone.requires_grad_(False)
        self.train(False)

    @classmethod
    def from_backbone(cls, backbone: nn.Module) -> ReferenceAnchor:
        """Wrap a frozen ``copy.deepcopy`` of ``backbone``; the original is left untouched.

        Example::

            >>> import torch
            >>> backbone = torch.nn.Linear(3, 2)
            >>> anchor = ReferenceAnchor.from_backbone(backbone)
            >>> anchor.backbone is backbone, torch.equal(anchor.backbone.weight, backbone.weight)
            (False, True)
        """
        if not isinstance(backbone, nn.Module):
            raise ValueError(f"`backbone` must be an nn.Module, got {type(backbone).__name__}.")
        return cls(copy.deepcopy(backbone))

    def train(self, mode: bool = True) -> ReferenceAnchor:
        """Stay in eval mode whatever ``mode`` is: the reference is fixed."""
        return super().train(False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The frozen backbone's output for the given inputs, computed under ``no_grad``."""
        with torch.no_grad():
            return self.backbone(*args, **kwargs)
