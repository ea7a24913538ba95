"""Multi-task metrics: Δm% against single-task baselines, mean rank, and per-task accuracy.

Δm% (Maninis et al., 2019; Liu et al., 2021) and the mean rank are the two summary numbers of
multi-task benchmark tables; :class:`PerTaskAccuracy` accumulates the accuracy of every task's
head over an epoch and synchronises under DDP like any torchmetrics metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["PerTaskAccuracy", "delta_m", "mean_rank"]

HigherIsBetter = bool | Mapping[str, bool]
"""One direction for every task, or task name → whether a higher value is better."""


def _directions(tasks: list[str], higher_is_better: HigherIsBetter) -> dict[str, bool]:
    """Expand ``higher_is_better`` to one flag per task, checking that it names every task."""
    if isinstance(higher_is_better, bool):
        return dict.fromkeys(tasks, higher_is_better)
    if not isinstance(higher_is_better, Mapping):
        raise TypeError(
            "higher_is_better must be a bool or a mapping of task name to bool; "
            f"got {type(higher_is_better).__name__}."
        )
    missing = sorted(set(tasks) - set(higher_is_better))
    extra = sorted(set(higher_is_better) - set(tasks))
    if missing or extra:
        raise ValueError(
            f"higher_is_better must name exactly the tasks {sorted(tasks)}; "
            f"missing {missing}, unknown {extra}."
        )
    return {task: bool(higher_is_better[task]) for task in tasks}


def _finite(value: float, what: str) -> float:
    """``float(value)``, or a ValueError naming ``what`` when it is NaN or infinite."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite; got {number}.")
    return number


def delta_m(
    metrics: Mapping[str, float],
    baselines: Mapping[str, float],
    higher_is_better: HigherIsBetter = True,
) -> float:
    """Δm%: the mean relative performance drop of every task against its baseline, in percent.

    ``Δm = (1/T) Σ_k (−1)^{δ_k} (M_k − M_b,k) / M_b,k × 100`` with ``δ_k = 1`` when a higher
    ``M_k`` is better, as in the RGB paper's §3.1 and the multi-task literature's tables
    (Maninis et al., 2019; Liu et al., 2021). The baselines are usually the single-task models.
    **Lower is better**: negative means better than the baselines; 0 is on par.

    Args:
        metrics: task name → the multi-task model's metric.
        baselines: task name → the baseline's metric, non-zero, for the same tasks.
        higher_is_better: ``True`` (accuracies), ``False`` (errors), or one flag per task.

    Returns:
        Δm in percent.

    Raises:
        ValueError: if the keys differ, a value is not finite, a baseline is zero, or there are
            no tasks.

    Example::

        >>> delta_m({"a": 0.75, "b": 0.5}, {"a": 0.5, "b": 0.5})  # −(+50% + 0%) / 2
        -25.0
        >>> round(delta_m({"a": 0.9, "b": 0.6}, {"a": 0.8, "b": 0.6}), 4)  # −(+12.5% + 0%) / 2
        -6.25
        >>> delta_m({"acc": 0.9, "err": 2.0}, {"acc": 0.9, "err": 1.0},
        ...         higher_is_better={"acc": True, "err": False})  # (0% + 100%) / 2: worse
        50.0
    """
    tasks = list(metrics)
    if not tasks:
        raise ValueError("delta_m needs at least one task; metrics is empty.")
    if set(tasks) != set(baselines):
        raise ValueError(
            "metrics and baselines must name the same tasks; "
            f"only in metrics: {sorted(set(tasks) - set(baselines))}, "
            f"only in baselines: {sorted(set(baselines) - set(tasks))}."
        )
    directions = _directions(tasks, higher_is_better)
    total = 0.0
    for task in tasks:
        value = _finite(metrics[task], f"the metric of task {task!r}")
        base = _finite(baselines[task], f"the baseline of task {task!r}")
        if base == 0.0:
            raise ValueError(
                f"the baseline of task {task!r} is 0: Δm divides by the baseline, so it is "
                "undefined; use a metric whose baseline is non-zero."
            )
        sign = -1.0 if directions[task] else 1.0
        total += sign * (value - base) / abs(base)
    return 100.0 * total / len(tasks)


def _average_ranks(values: list[float], higher_is_better: bool) -> list[float]:
    """Rank 1 for the best value; tied values share the mean of the ranks they span.

    Example::

        >>> _average_ranks([0.9, 0.8, 0.9], higher_is_better=True)
        [1.5, 3.0, 1.5]
    """
    order = sorted(range(len(values)), key=lambda i: -values[i] if higher_is_better else values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        # Positions start..end (0-based) hold ranks start+1..end+1; their mean is shared.
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def mean_rank(
    results: Mapping[str, Mapping[str, float]],
    higher_is_better: HigherIsBetter = True,
) -> dict[str, float]:
    """Each method's rank (1 = best) on every task, averaged over the tasks.

    Tied values share the mean of the ranks they span (two methods tied for first both get 1.5).

    Args:
        results: method → task → metric; every method must report the same tasks.
        higher_is_better: ``True``, ``False``, or one flag per task.

    Returns:
        method → mean rank, in the order of ``results``.

    Raises:
        ValueError: if there are no methods or tasks, the methods report different tasks, or a
            value is not finite.

    Example::

        >>> mean_rank({"ew": {"a": 0.9, "b": 0.7}, "mgda": {"a": 0.8, "b": 0.7},
        ...            "stl": {"a": 0.7, "b": 0.9}})
        {'ew': 1.75, 'mgda': 2.25, 'stl': 2.0}
    """
    methods = list(results)
    if not methods:
        raise ValueError("mean_rank needs at least one method; results is empty.")
    tasks = list(results[methods[0]])
    if not tasks:
        raise ValueError(f"method {methods[0]!r} reports no task.")
    for method in methods[1:]:
        if set(results[method]) != set(tasks):
            raise ValueError(
                f"every method must report the same tasks; {methods[0]!r} reports "
                f"{sorted(tasks)} but {method!r} reports {sorted(results[method])}."
            )
    directions = _directions(tasks, higher_is_better)
    totals = dict.fromkeys(methods, 0.0)
    for task in tasks:
        values = [_finite(results[m][task], f"{m!r} on task {task!r}") for m in methods]
        for method, rank in zip(methods, _average_ranks(values, directions[task]), strict=True):
            totals[method] += rank
    return {method: total / len(tasks) for method, total in totals.items()}


class PerTaskAccuracy(Metric):
    """Accuracy of each task's classifier, accumulated over batches (and processes, under DDP).

    ``update`` takes the predictions of all ``num_tasks`` heads at once: logits or probabilities
    ``[B, num_tasks, num_classes]``, or predicted labels ``[B, num_tasks]``; and the labels
    ``[B, num_tasks]``. ``compute`` returns the ``[num_tasks]`` accuracies. The states are
    counts summed across processes, so the result is exact whatever the batch sizes.

    Args:
        num_tasks: number of tasks (≥ 1).
        num_classes: number of classes of every task (≥ 2).
        kwargs: passed on to :class:`torchmetrics.Metric`.

    Example::

        >>> metric = PerTaskAccuracy(num_tasks=2, num_classes=3)
        >>> metric.update(torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 1], [2, 0]]))
        >>> logits = torch.tensor([[[5.0, 0, 0], [0, 0, 5.0]]])  # one sample: predicts 0 and 2
        >>> metric.update(logits, torch.tensor([[1, 2]]))
        >>> metric.compute()
        tensor([0.6667, 0.6667])
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    total: Tensor

    def __init__(self, num_tasks: int, num_classes: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int ≥ 2; got {num_classes!r}.")
        self.num_tasks = num_tasks
        self.num_classes = num_classes
        self.add_state("correct", torch.zeros(num_tasks, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Count the correct predictions of one batch.

        Args:
            preds: ``[B, num_tasks, num_classes]`` scores or ``[B, num_tasks]`` labels.
            target: ``[B, num_tasks]`` integer labels.
        """
        expected = (self.num_tasks,)
        if target.ndim != 2 or tuple(target.shape[1:]) != expected:
            raise ValueError(
                f"target must have shape [B, {self.num_tasks}]; got {tuple(target.shape)}."
            )
        if preds.ndim == 3:
            if tuple(preds.shape[1:]) != (self.num_tasks, self.num_classes):
                raise ValueError(
                    f"score preds must have shape [B, {self.num_tasks}, {self.num_classes}]; "
                    f"got {tuple(preds.shape)}."
                )
            preds = preds.argmax(dim=-1)
        elif preds.ndim != 2 or preds.is_floating_point():
            raise ValueError(
                f"preds must be scores [B, {self.num_tasks}, {self.num_classes}] or integer "
                f"labels [B, {self.num_tasks}]; got shape {tuple(preds.shape)}, {preds.dtype}."
            )
        if preds.shape != target.shape:
            raise ValueError(
                f"preds and target disagree: {tuple(preds.shape)} vs {tuple(target.shape)}."
            )
        self.correct += (preds == target).sum(dim=0)
        self.total += target.shape[0]

    def compute(self) -> Tensor:
        """The ``[num_tasks]`` accuracies (NaN before any sample was counted)."""
        return self.correct.float() / self.total.float()
