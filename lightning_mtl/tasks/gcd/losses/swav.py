"""SwAV swapped-prediction loss with Sinkhorn-Knopp codes (Caron et al., 2020).

PGI (Pareto-guided interference for GCD) adds SwAV to the representation objective as a
multi-view consistency regulariser (eq. 5-11): the prototype scores of each view are turned into
balanced soft cluster assignments ("codes") by a few Sinkhorn-Knopp iterations (appendix A.1,
algorithm 1), and each view must predict the codes of the other view. A per-sample mask restricts
the loss to a subset of the batch (the paper's ``Mask_lbl``; table 6 compares labeled, unlabeled
and all samples).

Under DDP the Sinkhorn sums over the batch run over the global batch through a caller-supplied
``all_reduce`` that sums a tensor over processes, so every process computes the codes the full
batch would give.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mtl.engine.precision import full_precision

__all__ = ["AllReduce", "SwAVLoss", "sinkhorn_knopp", "swav_loss"]

AllReduce = Callable[[Tensor], Tensor | None]
"""Sums a tensor over all processes. It may reduce in place and return ``None``, so
``torch.distributed.all_reduce`` can be passed as is."""


def _check_sinkhorn_args(
    scores: Tensor, epsilon: float, iterations: int, mask: Tensor | None
) -> None:
    """Validate the Sinkhorn inputs; raise ``ValueError`` with a clear message."""
    if scores.dim() != 2:
        raise ValueError(
            f"`scores` must be 2-D with shape [batch, prototypes], got shape {tuple(scores.shape)}."
        )
    if not scores.is_floating_point():
        raise ValueError(f"`scores` must be a floating-point tensor, got dtype {scores.dtype}.")
    if scores.shape[1] < 1:
        raise ValueError("`scores` must have at least one prototype (column).")
    if not epsilon > 0:
        raise ValueError(f"`epsilon` must be > 0, got {epsilon}.")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"`iterations` must be an int ≥ 1, got {iterations!r}.")
    if mask is not None and (mask.shape != scores.shape[:1] or mask.dtype != torch.bool):
        raise ValueError(
            f"`mask` must be a boolean tensor of shape [batch] = ({scores.shape[0]},), "
            f"got dtype {mask.dtype} and shape {tuple(mask.shape)}."
        )


def _reduce(all_reduce: AllReduce | None, tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over processes (identity in a single process)."""
    if all_reduce is None:
        return tensor
    reduced = all_reduce(tensor)
    # torch.distributed.all_reduce works in place and returns None.
    return tensor if reduced is None else reduced


def _normalise_rows(values: Tensor, all_reduce: AllReduce | None) -> Tensor:
    """``values`` minus the row-wise ``log Σ_b exp(values[k, b])`` over all processes' columns.

    The usual max subtraction needs a maximum that is the *same* on every process; with only a
    sum-reduction at hand, the global row maximum is bounded from above by Samuelson's inequality
    ``max_p m_p ≤ mean + std · sqrt(P − 1)`` over the per-process row maxima ``m_p``. The bound is
    the exact maximum for one or two processes and never below it, so ``exp`` cannot overflow;
    processes without a finite entry (no included sample) take no part. Rows with no finite entry
    anywhere are left as they are (no ``-inf - (-inf)`` NaN).
    """
    num_rows = values.shape[0]
    # float64 keeps mean-of-squares minus squared-mean accurate for large maxima (scores / ε can
    # reach 1e5); MPS has no float64.
    stats_dtype = torch.float32 if values.device.type == "mps" else torch.float64
    if values.shape[1] == 0:
        local_max = values.new_full((num_rows,), float("-inf"))
    else:
        local_max = values.amax(dim=1)
    present = torch.isfinite(local_max)
    local_max = torch.where(present, local_max, local_max.new_zeros(())).to(stats_dtype)
    present_f = present.to(stats_dtype)
    stats = torch.stack([local_max * present_f, local_max.square() * present_f, present_f])
    total_max, total_sq, processes = _reduce(all_reduce, stats).unbind()
    processes = processes.clamp(min=1.0)
    mean = total_max / processes
    variance = (total_sq / processes - mean.square()).clamp(min=0.0)
    shift = (mean + (variance * (processes - 1.0)).sqrt()).to(values.dtype)
    shifted = values - shift[:, None]
    sums = _reduce(all_reduce, torch.exp(shifted).sum(dim=1))
    # Subtracting the shift and the (small) log-sum separately keeps float32 precision when the
    # scores are large: shift + log(sums) would round at the scale of the shift.
    log_sums = torch.where(sums > 0, sums.log(), sums.new_zeros(()))
    return shifted - log_sums[:, None]


def sinkhorn_knopp(
    scores: Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    all_reduce: AllReduce | None = None,
    *,
    mask: Tensor | None = None,
) -> Tensor:
    """Balanced soft assignments of samples to prototypes (PGI appendix A.1, algorithm 1).

    With ``O`` the ``[B, K]`` scores, algorithm 1 computes::

        Q = exp(O / ε − max(O / ε))ᵀ                  # [K, B]
        Q = Q / ΣQ
        repeat `iterations` times:
            Q = Q / row sums / K                      # each prototype gets mass 1/K
            Q = Q / column sums / B                   # each sample gets mass 1/B
        return (Q · B)ᵀ                               # [B, K], each row sums to 1

    so the sample masses are exact after the last iteration (each row of the result sums to 1)
    while the prototype masses (column sums of the result) approach ``B / K`` as the iterations
    grow (SwAV's 3 iterations balance them only partially, a soft constraint).

    **Numerics.** The same iterations run on ``log Q``, every row or column sum being a
    log-sum-exp with its maximum subtracted (the max subtraction of eq. 7-8, done per prototype
    and at every step). So large scores neither overflow nor underflow (scores of 1e4 in
    bfloat16 are fine): a prototype whose entries would all underflow in ``exp`` still gets its
    mass ``1/K``, as in exact arithmetic. The
    scalar factors ``1 / ΣQ``, ``1/K``, ``1/B`` and ``× B`` are uniform over the rows or columns
    they multiply and cancel exactly in the next normalisation, so the code leaves them out (the
    result is the same; the tests check it against a literal float64 transcription of
    algorithm 1). Algorithm 1's small constant in the denominators is not needed: no sum is zero.

    **DDP.** Pass ``all_reduce`` (sums a tensor over processes; ``torch.distributed.all_reduce``
    works as is). The prototype (row) sums then run over the global batch, with a stabilising
    shift that is the same on every process, so each process gets its rows of the codes of the
    global batch, as SwAV does; the column normalisation is per sample and stays local (and the
    global ``B`` is not needed since it cancels). There are ``2 · iterations`` calls per use.
    The shared shift is the exact global row maximum for one or two processes; for more it is an
    upper bound (Samuelson's inequality), which only loses precision if the per-process row
    maxima of ``O / ε`` differ by many tens.

    **Mask.** With ``mask`` (boolean ``[B]``), only the selected samples take part: the others
    get all-zero rows and do not count in the prototype masses.

    The computation runs under ``torch.no_grad()`` (codes are targets), with autocast disabled in
    at least float32, so bfloat16 / float16 inputs are safe. It is vectorised and does not
    synchronise with the host. The result is float32 (float64 for float64 input) and does not
    require grad.

    Args:
        scores: Prototype scores ``O`` of shape ``[B, K]``, e.g. cosine similarities between
            normalised features and normalised prototypes.
        epsilon: Entropic regularisation, the temperature of ``exp(O / ε)`` (> 0). Default 0.05
            as in the paper and SwAV.
        iterations: Number of Sinkhorn iterations (≥ 1). Default 3.
        all_reduce: Sum over processes, or ``None`` for a single process.
        mask: Optional boolean ``[B]``: samples that take part (default all).

    Returns:
        Codes ``Q`` of shape ``[B, K]``; each row of an included sample sums to 1.

    Raises:
        ValueError: If ``scores`` is not 2-D floating point with ``K ≥ 1``, ``epsilon`` is not
            positive, ``iterations`` is not an int ≥ 1, or ``mask`` is not boolean ``[B]``.

    Example::

        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> scores = torch.randn(6, 3)
        >>> codes = sinkhorn_knopp(scores)
        >>> codes.shape, torch.allclose(codes.sum(dim=1), torch.ones(6))
        (torch.Size([6, 3]), True)
        >>> codes.sum(dim=0)  # prototype masses: they approach B / K = 2 as iterations grow
        tensor([1.9809, 1.0184, 3.0006])
        >>> sinkhorn_knopp(scores, iterations=200).sum(dim=0)
        tensor([2.0000, 2.0000, 2.0000])
        >>> # a constant added to every score changes nothing; huge scores stay finite
        >>> torch.allclose(sinkhorn_knopp(scores + 100.0), codes, atol=1e-5)
        True
        >>> sinkhorn_knopp(scores.bfloat16() * 1e4).sum(dim=1)
        tensor([1., 1., 1., 1., 1., 1.])
    """
    _check_sinkhorn_args(scores, epsilon, iterations, mask)
    device = scores.device
    compute_dtype = torch.promote_types(scores.dtype, torch.float32)
    with torch.no_grad(), full_precision(device):
        log_q = (scores.detach().to(compute_dtype) / epsilon).T  # [K, B]
        if mask is not None:
            # -inf (not a multiplication by 0) so excluded scores cannot leak inf/NaN.
            log_q = torch.where(mask[None, :], log_q, log_q.new_full((), float("-inf")))
        for _ in range(iterations):
            log_q = _normalise_rows(log_q, all_reduce)
            column_lse = torch.logsumexp(log_q, dim=0, keepdim=True)
            if mask is not None:
                # Excluded columns are all -inf; 0 keeps -inf - (-inf) = NaN away.
                column_lse = torch.where(mask[None, :], column_lse, column_lse.new_zeros(()))
            log_q = log_q - column_lse
        return log_q.exp().T


def _check_loss_args(
    logits_view1: Tensor, logits_view2: Tensor, mask: Tensor | None, temperature: float
) -> None:
    """Validate the SwAV loss inputs; raise ``ValueError`` with a clear message."""
    if logits_view1.dim() != 2 or logits_view1.shape != logits_view2.shape:
        raise ValueError(
            "`logits_view1` and `logits_view2` must both be 2-D with the same shape "
            f"[batch, prototypes], got {tuple(logits_view1.shape)} and "
            f"{tuple(logits_view2.shape)}."
        )
    if not (logits_view1.is_floating_point() and logits_view2.is_floating_point()):
        raise ValueError(
            "The logits must be floating-point tensors, "
            f"got dtypes {logits_view1.dtype} and {logits_view2.dtype}."
        )
    if mask is not None and (mask.shape != logits_view1.shape[:1] or mask.dtype != torch.bool):
        raise ValueError(
            f"`mask` must be a boolean tensor of shape [batch] = ({logits_view1.shape[0]},), "
            f"got dtype {mask.dtype} and shape {tuple(mask.shape)}."
        )
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")


def swav_loss(
    logits_view1: Tensor,
    logits_view2: Tensor,
    mask: Tensor | None = None,
    temperature: float = 0.1,
    epsilon: float = 0.05,
    iterations: int = 3,
    all_reduce: AllReduce | None = None,
    *,
    mask_sinkhorn: bool = False,
) -> Tensor:
    """SwAV swapped-prediction loss over two views, optionally restricted by a sample mask (eq. 11).

    With codes ``Q_v = sinkhorn_knopp(P_v)`` (no gradient) and predictions
    ``log softmax(P_v / τ)`` of the prototype scores ``P_v`` of view ``v``::

        l_b  = −Σ_k ( Q_1[b, k] log softmax(P_2[b] / τ)_k + Q_2[b, k] log softmax(P_1[b] / τ)_k )
        loss = Σ_b mask_b l_b / max(Σ_b mask_b, 1)

    i.e. the mean of ``l_b`` over the masked samples (all samples without a mask). Each view
    predicts the other view's code. The two terms are summed as in eq. 11; SwAV's reference code
    averages them, which is half this value.

    **The mask** (PGI table 6): pass ``mask=is_labeled`` for "W/Labeled" (the paper's choice,
    ``Mask_lbl``), ``mask=~is_labeled`` for "W/Unlabeled", or ``None`` for all samples. As in the
    paper the mask only weights the loss terms: by default the codes are computed over the whole
    batch (eq. 7-10 use all ``B`` samples), so unmasked samples still shape the balanced targets
    of the masked ones but receive no gradient. ``mask_sinkhorn=True`` runs Sinkhorn on the masked
    samples alone, so unmasked samples have no influence at all. An all-false mask gives a loss of
    0 with a zero (finite) gradient.

    **Temperature.** ``τ = 0.1`` is SwAV's prediction temperature. PGI's implementation details
    list "the temperature parameter τ is 0.07", but eq. 11 has no separate prediction temperature,
    the Sinkhorn temperature of appendix A.1 is 0.05, and 0.07 is the contrastive (SupCon /
    InfoNCE) temperature of the GCD baselines PGI builds on, so it is read as that one.

    Under DDP pass ``all_reduce`` so the codes use the global batch (see :func:`sinkhorn_knopp`);
    the mean is over the local masked samples and DDP averages the gradients over processes.
    Computed with autocast disabled in at least float32; vectorised, no host synchronisation.

    Args:
        logits_view1: Prototype scores of the first view, shape ``[B, K]``, e.g. cosine
            similarities of normalised features and normalised prototypes.
        logits_view2: Prototype scores of the second view, shape ``[B, K]``.
        mask: Optional boolean ``[B]``: the samples whose terms count (default all).
        temperature: Softmax temperature ``τ`` of the predictions (> 0). Default 0.1.
        epsilon: Sinkhorn temperature (> 0). Default 0.05.
        iterations: Sinkhorn iterations (≥ 1). Default 3.
        all_reduce: Sum over processes for the Sinkhorn sums, or ``None`` for a single process.
        mask_sinkhorn: Also restrict the Sinkhorn codes to the masked samples. Default False.

    Returns:
        Scalar loss tensor (float32; float64 for float64 input).

    Raises:
        ValueError: If the logits are not two floating-point ``[B, K]`` tensors of the same shape,
            ``mask`` is not boolean ``[B]``, or a temperature / ``iterations`` is invalid.

    Example::

        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> p1, p2 = torch.randn(8, 4, requires_grad=True), torch.randn(8, 4)
        >>> is_labeled = torch.tensor([True, False] * 4)
        >>> loss = swav_loss(p1, p2, mask=is_labeled)
        >>> loss.shape, bool(loss > 0)
        (torch.Size([]), True)
        >>> loss.backward()
        >>> p1.grad[~is_labeled].abs().sum()  # unmasked samples get no gradient
        tensor(0.)
        >>> swav_loss(p1, p2, mask=torch.zeros(8, dtype=torch.bool))
        tensor(0., grad_fn=<DivBackward0>)
    """
    _check_loss_args(logits_view1, logits_view2, mask, temperature)
    device = logits_view1.device
    compute_dtype = torch.promote_types(
        torch.promote_types(logits_view1.dtype, logits_view2.dtype), torch.float32
    )
    sinkhorn_mask = mask if mask_sinkhorn else None
    codes1 = sinkhorn_knopp(logits_view1, epsilon, iterations, all_reduce, mask=sinkhorn_mask)
    codes2 = sinkhorn_knopp(logits_view2, epsilon, iterations, all_reduce, mask=sinkhorn_mask)
    with full_precision(device):
        log_pred1 = F.log_softmax(logits_view1.to(compute_dtype) / temperature, dim=1)
        log_pred2 = F.log_softmax(logits_view2.to(compute_dtype) / temperature, dim=1)
        per_sample = -(
            (codes1.to(compute_dtype) * log_pred2).sum(dim=1)
            + (codes2.to(compute_dtype) * log_pred1).sum(dim=1)
        )
        if mask is None:
            mask = torch.ones(per_sample.shape, dtype=torch.bool, device=device)
        # torch.where (not multiplication) so that unmasked samples cannot leak inf/NaN; the clamp
        # keeps the division host-sync free and gives 0 for an all-false mask.
        total = torch.where(mask, per_sample, per_sample.new_zeros(())).sum()
        return total / mask.sum().clamp(min=1).to(compute_dtype)


class SwAVLoss(nn.Module):
    """Module wrapper around :func:`swav_loss`.

    Args:
        temperature: Prediction softmax temperature (> 0). Default 0.1 (SwAV's; see
            :func:`swav_loss` for why not PGI's 0.07).
        epsilon: Sinkhorn temperature (> 0). Default 0.05.
        iterations: Sinkhorn iterations (≥ 1). Default 3.
        all_reduce: Sum over processes for the Sinkhorn sums under DDP, or ``None``.
        mask_sinkhorn: Also restrict the Sinkhorn codes to the masked samples. Default False.

    Raises:
        ValueError: If a temperature is not positive or ``iterations`` is not an int ≥ 1.

    Example::

        >>> import torch
        >>> criterion = SwAVLoss()
        >>> p1, p2 = torch.randn(6, 3), torch.randn(6, 3)
        >>> criterion(p1, p2).shape
        torch.Size([])
        >>> criterion(p1.bfloat16(), p2.bfloat16(), mask=torch.rand(6) > 0.5).dtype
        torch.float32
    """

    def __init__(
        self,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        iterations: int = 3,
        all_reduce: AllReduce | None = None,
        mask_sinkhorn: bool = False,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}.")
        if not epsilon > 0:
            raise ValueError(f"`epsilon` must be > 0, got {epsilon}.")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"`iterations` must be an int ≥ 1, got {iterations!r}.")
        self.temperature = temperature
        self.epsilon = epsilon
        self.iterations = iterations
        self.all_reduce = all_reduce
        self.mask_sinkhorn = mask_sinkhorn

    def forward(
        self, logits_view1: Tensor, logits_view2: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        """Compute the loss; see :func:`swav_loss` for shapes and the mask.

        Args:
            logits_view1: Prototype scores of the first view, shape ``[B, K]``.
            logits_view2: Prototype scores of the second view, shape ``[B, K]``.
            mask: Optional boolean ``[B]``: the samples whose terms count.

        Returns:
            Scalar loss tensor.

        Example::

            >>> import torch
            >>> SwAVLoss()(torch.randn(4, 3), torch.randn(4, 3)).ndim
            0
        """
        return swav_loss(
            logits_view1,
            logits_view2,
            mask,
            temperature=self.temperature,
            epsilon=self.epsilon,
            iterations=self.iterations,
            all_reduce=self.all_reduce,
            mask_sinkhorn=self.mask_sinkhorn,
        )

    def extra_repr(self) -> str:
        """Show the hyper-parameters in ``print(module)``."""
        return (
            f"temperature={self.temperature}, epsilon={self.epsilon}, "
            f"iterations={self.iterations}, distributed={self.all_reduce is not None}, "
            f"mask_sinkhorn={self.mask_sinkhorn}"
        )
