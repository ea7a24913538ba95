"""The LightningModule mixin: named objectives in, balanced gradients and an optimizer step out."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_mtl.engine.balance import (
    Backend,
    GradientEngine,
    ObjectiveGradients,
    Scope,
    check_accumulation,
)
from lightning_mtl.engine.jacobian import JacobianForm
from lightning_mtl.engine.observers import GradientObserver
from lightning_mtl.engine.scope import (
    outline,
    shared_parameters,
    submodule_parameters,
    used_parameters,
)
from lightning_mtl.engine.sharpness import Perturbation, perturb
from lightning_mtl.naming import metric_name
from lightning_mtl.objectives import (
    ObjectiveGroups,
    Objectives,
    check_groups,
    check_losses,
    combine,
)
from lightning_mtl.strategies.base import (
    GradientBalancingStrategy,
    LossWeighting,
    TrainingProgress,
    strategy_from_config,
)
from lightning_mtl.strategies.sharpness_aware import SharpnessAware

ScopeSpec = Literal["shared", "representation"] | Sequence[str]

CHECKPOINT_KEY = "lightning_mtl"


class NonFiniteObjectiveError(FloatingPointError):
    """An objective was NaN or infinite (raised with ``nonfinite="raise"``)."""


class MultiObjectiveMixin:
    """Mix into a ``LightningModule`` to train named objectives with a balancing strategy.

    Put the mixin *before* ``LightningModule`` in the bases, call :meth:`configure_balancing`
    in ``__init__`` and implement :meth:`compute_objectives`. The mixin owns ``training_step``
    under manual optimisation: it asks the engine for what the strategy needs (nothing beyond
    one backward pass for loss-only strategies), writes ``.grad``, steps the single optimizer and
    the LR schedulers (``interval`` ``"step"`` or ``"epoch"``, with ``frequency``), and logs
    the total (``train/loss``, every step) and, on the steps the Trainer writes logs (every
    ``log_every_n_steps``: Lightning's ``self.log`` costs about half a millisecond of Python per
    call, measured on a 2-core CPU, which at 40 objectives would outweigh a small model's step),
    every loss and group (``train/<name>``), the strategy's values (``balancing/weight/<name>``
    and its own) and, when the step computed per-objective gradients, their norms
    (``grad_norm/<name>``); names keep only characters every logger keeps
    (:func:`~lightning_mtl.naming.metric_name`).
    It works under ``32-true``, ``bf16-mixed``, ``16-mixed`` (losses scaled through the
    Trainer's scaler, clipping after unscaling) and DDP.

    If you override ``on_train_epoch_end``, ``on_before_optimizer_step``,
    ``on_save_checkpoint`` or ``on_load_checkpoint``, call ``super()``.

    Example::

        >>> import torch
        >>> import lightning.pytorch as pl
        >>> from lightning_mtl import MultiObjectiveMixin
        >>> from lightning_mtl.strategies import PGI
        >>> class TwoHeads(MultiObjectiveMixin, pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.trunk = torch.nn.Linear(4, 8)
        ...         self.cls, self.rep = torch.nn.Linear(8, 1), torch.nn.Linear(8, 1)
        ...         self.configure_balancing(PGI(alpha=0.35))
        ...     def compute_objectives(self, batch, batch_idx):
        ...         z = self.trunk(batch[0]).relu()
        ...         return {"cls": self.cls(z).pow(2).mean(), "rep": self.rep(z).abs().mean()}
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)))
        >>> trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(TwoHeads(), data)
        >>> trainer.global_step
        2
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        lightning_bases = [i for i, base in enumerate(mro) if base is LightningModule]
        if lightning_bases and lightning_bases[0] < mro.index(MultiObjectiveMixin):
            raise TypeError(
                f"{cls.__name__} lists LightningModule before MultiObjectiveMixin, so the "
                "LightningModule's hooks would hide the mixin's; put the mixin first: "
                f"class {cls.__name__}(MultiObjectiveMixin, LightningModule)."
            )

    hp_metric: str | None = None
    """A logged validation metric to log again as ``hp_metric`` at each epoch end: the value
    TensorBoard's HPARAMS view compares runs (and their strategies' hyper-parameters) by."""

    balancing_strategy: GradientBalancingStrategy | None = None
    balancing_override: GradientBalancingStrategy | None = None
    """A strategy used instead of :attr:`balancing_strategy` (set by warm-up callbacks)."""

    def configure_balancing(
        self,
        strategy: GradientBalancingStrategy | Mapping[str, Any],
        *,
        scope: ScopeSpec = "shared",
        groups: ObjectiveGroups | None = None,
        nonfinite: Literal["raise", "skip"] = "raise",
        max_consecutive_skips: int = 20,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Literal["norm", "value"] = "norm",
        jacobian_chunk_size: int | None = None,
        jacobian_form: JacobianForm = "auto",
        accumulate_grad_batches: int = 1,
        lr_scheduler_monitor: str | None = None,
    ) -> None:
        """Choose the strategy and how objectives and gradients are formed.

        Args:
            strategy: the balancing strategy, or its config (``{"class_path": ...,
                "init_args": ...}``, as :meth:`GradientBalancingStrategy.config` writes it and
                ``load_from_checkpoint`` passes it back from the saved hyper-parameters). When
                the module saved hyper-parameters (``save_hyperparameters``), the strategy's
                config is added to them as ``strategy``, so that ``hparams.yaml`` records it and
                ``load_from_checkpoint`` rebuilds it.
            scope: what the strategy balances. ``"shared"``: the parameters that more than one
                objective depends on; ``"representation"``: the gradients with respect to the
                tensor that ``compute_objectives`` designates with
                :class:`~lightning_mtl.Objectives`; or a list of submodule names. For strategies
                that work on gradients (Gramian or Jacobian), parameters outside the scope get
                the gradient of the plain sum of the objectives, as in LibMTL and torchjd.
                Loss-based strategies (PGI, fixed or learned loss weights) weigh the loss
                itself, so every parameter gets the weighted gradient and the scope only matters
                to callbacks that measure gradients.
            groups: group name → {loss name: weight}; each group is one objective for the
                strategy (e.g. PGI's ``L_s`` and ``L_u``). ``None``: every loss is an objective.
            nonfinite: what a step with a NaN or infinite objective or gradient does. Either
                way it is caught on the step it occurs, with one read of a flag on the host per
                step, and no update is applied (the weights, the optimizer state, the
                strategy's state and so every checkpoint stay finite). ``"raise"``: a
                :class:`NonFiniteObjectiveError` naming the objectives and the step;
                ``"skip"``: a warning, and training goes on. Under ``16-mixed`` a gradient
                overflow with finite objectives is the loss scaler's to skip (it lowers the
                scale), not a non-finite step.
            max_consecutive_skips: with ``"skip"``, raise once this many steps in a row were
                skipped (a loss that stays non-finite would otherwise loop forever).
            gradient_clip_val: clip the balanced gradient (after unscaling under ``16-mixed``).
            gradient_clip_algorithm: ``"norm"`` or ``"value"``.
            jacobian_chunk_size: objectives per batched backward pass when per-objective
                gradients are computed; lower it to save memory.
            jacobian_form: how per-objective gradients are computed: ``"auto"`` (one backward
                pass per objective on the CPU, the fastest form measured on the first steps on
                an accelerator, logged), ``"measure"``, ``"loop"``, ``"batched"`` or ``"func"``
                (see :class:`~lightning_mtl.engine.JacobianComputer`).
            accumulate_grad_batches: micro-batches per optimizer step (Lightning's own
                ``Trainer(accumulate_grad_batches=...)`` is not available under manual
                optimisation). The ``k`` micro-batches make one balancing decision and one
                optimizer step, equal to the step on their concatenation for batch-mean
                objectives. A Gramian or Jacobian strategy keeps the running mean of the scope's
                ``[T, D]`` per-objective gradients (and of the other parameters' gradients)
                across the micro-batches, which costs that buffer's memory; a value-free loss
                weighting (LinearScalarization, PGI, RLW) accumulates in ``.grad`` at no extra
                memory. Loss weightings that read the losses (DWA, UW, FAMO), the
                representation scope and sharpness-aware strategies cannot accumulate.
            lr_scheduler_monitor: the logged metric a ``ReduceLROnPlateau`` scheduler reads.
                Lightning drops the ``monitor`` key of scheduler configs under manual
                optimisation, so it is named here instead.
        """
        if isinstance(strategy, Mapping):
            strategy = strategy_from_config(strategy)
        if isinstance(strategy, type):
            raise TypeError(
                f"strategy must be an instance; got the class {strategy.__name__}: pass "
                f"{strategy.__name__}(...)."
            )
        if not isinstance(strategy, GradientBalancingStrategy):
            raise TypeError(
                f"strategy must be a GradientBalancingStrategy; got {type(strategy).__name__}."
            )
        if isinstance(scope, str) and scope not in ("shared", "representation"):
            scope = [scope]
        inner = strategy.inner if isinstance(strategy, SharpnessAware) else strategy
        if scope == "representation" and inner.needs_parameter_scope:
            raise ValueError(
                f"{type(inner).__name__} keeps state in the coordinates of the balanced scope "
                "from step to step, and a representation's coordinates are features of other "
                "samples at every step: use scope='shared' or submodule names."
            )
        if not isinstance(scope, str) and not scope:
            raise ValueError("scope names no submodule; pass 'shared' or submodule names.")
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"nonfinite must be 'raise' or 'skip'; got {nonfinite!r}.")
        if isinstance(max_consecutive_skips, bool) or not (
            isinstance(max_consecutive_skips, int) and max_consecutive_skips >= 1
        ):
            raise ValueError(
                f"max_consecutive_skips must be a positive integer; got {max_consecutive_skips!r}."
            )
        if gradient_clip_val is not None and not (
            math.isfinite(gradient_clip_val) and gradient_clip_val > 0
        ):
            raise ValueError(f"gradient_clip_val must be positive; got {gradient_clip_val}.")
        if gradient_clip_algorithm not in ("norm", "value"):
            raise ValueError("gradient_clip_algorithm must be 'norm' or 'value'.")
        self.balancing_strategy = strategy
        self.balancing_scope: ScopeSpec = scope if isinstance(scope, str) else list(scope)
        self.objective_groups = check_groups(groups) if groups is not None else None
        self.nonfinite = nonfinite
        self.max_consecutive_skips = max_consecutive_skips
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        if accumulate_grad_batches > 1 and isinstance(strategy, SharpnessAware):
            raise ValueError(
                "a sharpness-aware strategy perturbs the weights on every batch, so it cannot "
                "accumulate micro-batches; pass accumulate_grad_batches=1."
            )
        if accumulate_grad_batches > 1:
            check_accumulation(
                strategy,
                Scope(representation=torch.empty(0)) if scope == "representation" else Scope(),
            )
        self.gradient_engine = GradientEngine(
            jacobian_chunk_size, accumulate_grad_batches, jacobian_form
        )
        self.lr_scheduler_monitor = lr_scheduler_monitor
        self.objective_gradients: dict[str, ObjectiveGradients] = {}
        self._scope_cache: dict[tuple[str, ...], tuple[list[nn.Parameter], list[nn.Parameter]]] = {}
        self._prepared: dict[int, tuple[str, ...]] = {}
        self._total_steps: int | None = None
        self._consecutive_skips = 0
        self._micro_batch = 0
        self._saved_state: dict[str, Any] = {}
        self._record_strategy_hyperparameter(strategy)

    def compute_objectives(self, batch: Any, batch_idx: int) -> Mapping[str, Tensor] | Objectives:
        """Return the named scalar losses of this batch (or :class:`~lightning_mtl.Objectives`).

        Override this instead of ``training_step``.
        """
        raise TypeError(
            f"{type(self).__name__} must implement compute_objectives(batch, batch_idx)."
        )

    def compute_perturbation_objectives(
        self, batch: Any, batch_idx: int
    ) -> Mapping[str, Tensor] | Objectives:
        """The losses whose summed gradient sets a sharpness-aware strategy's perturbation
        (:class:`~lightning_mtl.strategies.SharpnessAware`, :class:`~lightning_mtl.strategies.PLOT`)
        and trains the parameters outside the balanced scope; by default
        :meth:`compute_objectives`. Override it when the perturbing pass uses another loss (PLOT
        on a base method with mixup: the mixed-up base loss, while the balanced pass uses the
        per-class objectives)."""
        return self.compute_objectives(batch, batch_idx)

    @property
    def automatic_optimization(self) -> bool:
        """Always ``False``: the mixin steps the optimizer itself."""
        return False

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        if value:
            raise ValueError(
                "MultiObjectiveMixin needs manual optimisation: it computes the balanced gradient "
                "and steps the optimizer itself. Do not set automatic_optimization = True."
            )

    @property
    def active_balancing_strategy(self) -> GradientBalancingStrategy:
        """The strategy used on the coming step: the override if set, else the configured one."""
        strategy = self.balancing_override or self.balancing_strategy
        if strategy is None:
            raise RuntimeError(
                f"{type(self).__name__} has no strategy: call self.configure_balancing(strategy) "
                "in __init__."
            )
        return strategy

    def reset_balancing_scope(self) -> None:
        """Forget which parameters form the balanced scope, so that the next step finds them anew.

        The mixin works them out once per set of objective names; call this after freezing or
        unfreezing parameters (as cRT's :class:`~lightning_mtl.tasks.long_tail.ClassifierRetraining`
        does).
        """
        self._scope_cache.clear()

    # --- Lightning hooks -------------------------------------------------------------------

    def on_fit_start(self) -> None:
        module: Any = self
        if type(self).compute_objectives is MultiObjectiveMixin.compute_objectives:
            raise TypeError(f"{type(self).__name__} must implement compute_objectives().")
        self.active_balancing_strategy  # noqa: B018 - raises when none is configured
        if not isinstance(self.balancing_scope, str):
            submodule_parameters(module, self.balancing_scope)  # reports bad names up front
        if len(module.trainer.optimizers) != 1:
            raise ValueError(
                "MultiObjectiveMixin steps exactly one optimizer; configure_optimizers returned "
                f"{len(module.trainer.optimizers)}. Put all parameter groups in one optimizer."
            )
        check_training_strategy(
            module.trainer.strategy,
            self._strategies_in_use(),
            [c for c in module.trainer.callbacks if isinstance(c, GradientObserver)],
        )
        total = module.trainer.estimated_stepping_batches
        accumulated = self.gradient_engine.accumulate_grad_batches
        if module.trainer.max_steps == -1:
            total = math.ceil(total / accumulated)  # Lightning counts batches here
        self._total_steps = int(total) if math.isfinite(total) else None

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        module: Any = self
        trainer = module.trainer
        strategy = self.active_balancing_strategy
        balancer = strategy.inner if isinstance(strategy, SharpnessAware) else strategy
        optimizer = module.optimizers()
        self.objective_gradients = {}
        accumulated = self.gradient_engine.accumulate_grad_batches
        final = (self._micro_batch + 1) % accumulated == 0 or bool(trainer.is_last_batch)
        if self._micro_batch == 0:
            optimizer.zero_grad(set_to_none=True)
            # References, not copies: strategies replace their state tensors, never mutate
            # them, so a skipped step can put the state back as it was.
            self._saved_state = balancer.state_dict()
        self._micro_batch = 0 if final else self._micro_batch + 1
        perturbation = None
        if isinstance(strategy, SharpnessAware):
            perturbation = self._sharpness_aware_perturbation(batch, batch_idx, strategy.rho)
        output = self.compute_objectives(batch, batch_idx)
        losses = check_losses(output)
        representation = output.representation if isinstance(output, Objectives) else None
        names, objective_list = combine(losses, self.objective_groups)
        objectives = torch.stack(objective_list)
        logging = self._loggers_write_this_step()
        self._log_objectives(losses, names, objectives, logging)

        if self._prepared.get(id(strategy)) != names:
            strategy.setup(names)
            self._prepared[id(strategy)] = names
        observers = [
            callback
            for callback in trainer.callbacks
            if isinstance(callback, GradientObserver)
            and callback.wants_objective_gradients(trainer, module)
        ]
        needs_scope = balancer.requirement.value != "losses" or any(
            callback.objective_gradient_parameters(module) is None for callback in observers
        )
        if perturbation is not None:
            # Outside the scope, the unperturbed loss's gradient trains (written below).
            scope = Scope(parameters=perturbation.scope)
        elif needs_scope:
            scope = self._scope(names, objective_list, representation)
        else:
            scope = Scope()
        result = self.gradient_engine.step(
            names,
            objectives,
            balancer,
            scope,
            self._progress(),
            self._backend(),
            observed={
                callback.scope_key: callback.objective_gradient_parameters(module)
                for callback in observers
            },
            keep_edited=any(callback.wants_edited_gradients for callback in observers),
            final=final,
            norms=logging,
        )
        if result is None:  # a micro-batch before the last of an accumulated step
            return objectives.detach().sum()
        if perturbation is not None:
            perturbation.write_other_grads()
        finite_losses, finite = self._finiteness(result.losses, optimizer, perturbation)
        if bool(finite):  # the step's one host synchronisation
            self._consecutive_skips = 0
            if perturbation is not None and isinstance(strategy, SharpnessAware):
                perturbation.undo(strategy.keep)
            self.objective_gradients = result.observed
            optimizer.step()
            self._step_schedulers("step")
            if logging:
                for key, value in strategy.log_values().items():
                    module.log(metric_name("balancing", key), value)
                if result.gradient_norms is not None:
                    for name, norm in zip(names, result.gradient_norms, strict=True):
                        module.log(metric_name("grad_norm", name), norm)
            return objectives.detach().sum()
        if perturbation is not None:
            perturbation.undo(0.0)
        balancer.load_state_dict(self._saved_state)
        if self._scaler_is_enabled() and bool(finite_losses.all()):
            # A gradient overflow under 16-mixed: the scaler skips the update and lowers the
            # scale, which it only does when asked to step.
            optimizer.step()
            return None
        optimizer.zero_grad(set_to_none=True)
        self._nonfinite_step(names, finite_losses, trainer.global_step)
        return None

    def on_train_epoch_end(self) -> None:
        self._step_schedulers("epoch")
        if self.hp_metric is not None:
            # Validation ran before this hook, so its epoch metrics are in.
            value = getattr(self, "trainer").callback_metrics.get(self.hp_metric)  # noqa: B009
            if value is not None:
                getattr(self, "log")("hp_metric", value)  # noqa: B009

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this after the 16-mixed scaler has unscaled the gradients, which is
        # where clipping must happen (clip_gradients in training_step would clip scaled values).
        if self.gradient_clip_val is not None:
            module: Any = self
            module.clip_gradients(
                optimizer,
                gradient_clip_val=self.gradient_clip_val,
                gradient_clip_algorithm=self.gradient_clip_algorithm,
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        strategy = self.balancing_strategy
        checkpoint[CHECKPOINT_KEY] = {
            "strategy": self.active_strategy_state(),
            "config": _config_or_none(strategy) if strategy is not None else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        strategy = self.balancing_strategy
        if state is None or strategy is None:
            return
        saved, current = state.get("config"), _config_or_none(strategy)
        if saved is not None and current is not None and saved != current:
            rank_zero_warn(
                f"the checkpoint was trained with the strategy {saved}, but this module uses "
                f"{current}; the strategy's state is not restored. Build the module with the "
                "checkpoint's strategy to continue its run."
            )
            return
        strategy.load_state_dict(state["strategy"])

    def active_strategy_state(self) -> dict[str, Any]:
        """The configured strategy's state, as saved in checkpoints."""
        return self.balancing_strategy.state_dict() if self.balancing_strategy else {}

    # --- internals -------------------------------------------------------------------------

    def _sharpness_aware_perturbation(
        self, batch: Any, batch_idx: int, radius: float
    ) -> Perturbation:
        """First pass of a sharpness-aware step: the sum of
        :meth:`compute_perturbation_objectives` moves the scope to its worst-case neighbour (see
        :func:`~lightning_mtl.engine.sharpness.perturb`)."""
        module: Any = self
        if isinstance(self.balancing_scope, str):
            raise ValueError(
                "a sharpness-aware strategy (e.g. PLOT) perturbs named submodules: pass "
                "configure_balancing(..., scope=[...]) with some of this model's submodules "
                f"{outline(module)}, rather than scope={self.balancing_scope!r}."
            )
        losses = check_losses(self.compute_perturbation_objectives(batch, batch_idx))
        total = torch.stack([loss.float() for loss in losses.values()]).sum()
        module.log("train/perturb_loss", total.detach())
        scope = submodule_parameters(module, self.balancing_scope)
        inside = {id(p) for p in scope}
        trainable = [p for p in module.parameters() if p.requires_grad]
        others = [p for p in used_parameters([total], trainable) if id(p) not in inside]
        return perturb(total, scope, others, radius, self._backend())

    def _loggers_write_this_step(self) -> bool:
        """Whether the Trainer's loggers write at this step (its ``log_every_n_steps``)."""
        # Each `self.log` call costs about as much Python as a small model's step, and loggers
        # only write on their cadence: per-objective values are logged on those steps only.
        # Lightning counts the batch being trained as ready and writes when that count is a
        # multiple of log_every_n_steps (tests/test_mixin_checks.py pins the agreement).
        trainer: Any = getattr(self, "trainer")  # noqa: B009 - the mixin's host
        every = trainer.log_every_n_steps
        if every == 0:
            return False
        batches = trainer.fit_loop.epoch_loop.batch_progress.total.ready
        return batches % every == 0 or bool(trainer.should_stop)

    def _strategies_in_use(self) -> list[GradientBalancingStrategy]:
        """The configured strategy and those of strategy-switching callbacks."""
        trainer: Any = getattr(self, "trainer")  # noqa: B009 - the mixin's host
        strategies = [self.active_balancing_strategy]
        for callback in trainer.callbacks:
            for name in ("first", "second"):
                candidate = getattr(callback, name, None)
                if isinstance(candidate, GradientBalancingStrategy):
                    strategies.append(candidate)
        return strategies

    def _record_strategy_hyperparameter(self, strategy: GradientBalancingStrategy) -> None:
        """Add the strategy's config to the hyper-parameters the module saved, if it saved any
        (``hparams.yaml``, and ``load_from_checkpoint`` rebuilding it)."""
        module: Any = self
        config = _config_or_none(strategy)
        if config is not None and len(module.hparams) > 0:
            module.save_hyperparameters({**module.hparams, "strategy": config})

    def _log_objectives(
        self,
        losses: Mapping[str, Tensor],
        names: tuple[str, ...],
        objectives: Tensor,
        logging: bool,
    ) -> None:
        module: Any = self
        module.log("train/loss", objectives.detach().sum(), prog_bar=True)
        if not logging:
            return
        for name, loss in losses.items():
            module.log(metric_name("train", name), loss.detach())
        if self.objective_groups is not None:
            for name, value in zip(names, objectives.detach(), strict=True):
                module.log(metric_name("train", name), value)

    def _finiteness(
        self,
        losses: Tensor,
        optimizer: Any,
        perturbation: Perturbation | None,
    ) -> tuple[Tensor, Tensor]:
        """``([T] whether each objective is finite, whether the whole step is)``, on the device.

        The losses are averaged over processes and the gradients all-reduced, so every process
        reaches the same decision without further communication.
        """
        finite_losses = torch.isfinite(losses)
        finite = finite_losses.all()
        grads = [
            parameter.grad
            for group in optimizer.param_groups
            for parameter in group["params"]
            if parameter.grad is not None
        ]
        if grads:
            # The largest magnitude cannot overflow, unlike a 2-norm of large finite gradients.
            largest = torch.nn.utils.get_total_norm(grads, norm_type=math.inf)
            finite = finite & torch.isfinite(largest)
        if perturbation is not None:
            finite = finite & perturbation.finite
        return finite_losses, finite

    def _nonfinite_step(self, names: tuple[str, ...], finite: Tensor, step: int) -> None:
        """Raise, or warn and count, for a step that was not applied."""
        bad = [name for name, good in zip(names, finite.tolist(), strict=True) if not good]
        what = (
            f"objective(s) {bad} not finite"
            if bad
            else "the gradients are not finite (with finite objectives)"
        )
        if self.nonfinite == "raise":
            raise NonFiniteObjectiveError(
                f"{what} at step {step}; the update was not applied. Lower the learning rate, "
                "check the inputs, or pass configure_balancing(..., nonfinite='skip') to skip "
                "such steps."
            )
        self._consecutive_skips += 1
        if self._consecutive_skips >= self.max_consecutive_skips:
            raise NonFiniteObjectiveError(
                f"{self._consecutive_skips} consecutive steps were skipped, the last at step "
                f"{step} because {what}; giving up (max_consecutive_skips="
                f"{self.max_consecutive_skips})."
            )
        rank_zero_warn(f"{what} at step {step}; the step is skipped.")

    def _scaler_is_enabled(self) -> bool:
        scaler = getattr(getattr(self, "trainer").precision_plugin, "scaler", None)  # noqa: B009
        return scaler is not None and scaler.is_enabled()

    def _scope(
        self,
        names: tuple[str, ...],
        objectives: Sequence[Tensor],
        representation: Tensor | None,
    ) -> Scope:
        module: Any = self
        if self.balancing_scope == "representation" and representation is None:
            raise ValueError(
                "scope='representation' needs compute_objectives to return "
                "lightning_mtl.Objectives(losses, representation=features)."
            )
        if names not in self._scope_cache:
            trainable = [p for p in module.parameters() if p.requires_grad]
            if self.balancing_scope == "representation":
                assert representation is not None
                inner = used_parameters([representation], trainable)
            elif self.balancing_scope == "shared":
                inner = shared_parameters(objectives, trainable)
                if not inner:
                    raise ValueError(
                        f"no parameter is shared by more than one of the objectives {list(names)}; "
                        "name the scope's submodules with configure_balancing(scope=[...])."
                    )
            else:
                inner = submodule_parameters(module, self.balancing_scope)
            inside = {id(p) for p in inner}
            outside = [p for p in used_parameters(objectives, trainable) if id(p) not in inside]
            self._scope_cache[names] = (inner, outside)
        inner, outside = self._scope_cache[names]
        if self.balancing_scope == "representation":
            return Scope(representation=representation, trunk=inner, others=outside)
        return Scope(parameters=inner, others=outside)

    def _progress(self) -> TrainingProgress:
        trainer: Any = self.trainer  # type: ignore[attr-defined]
        return TrainingProgress(
            step=trainer.global_step,
            epoch=trainer.current_epoch,
            total_steps=self._total_steps,
            total_epochs=trainer.max_epochs if trainer.max_epochs not in (None, -1) else None,
        )

    def _backend(self) -> Backend:
        module: Any = self
        trainer = module.trainer
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        scale = None
        if scaler is not None and scaler.is_enabled():
            # scale(ones) reads the current scale as a device tensor, without a host sync.
            scale = scaler.scale(torch.ones((), device=module.device))
        return Backend(
            loss_scale=scale,
            backward=module.manual_backward,
            world_size=trainer.world_size,
            rank=trainer.global_rank,
            all_reduce_sum=lambda tensor: trainer.strategy.reduce(tensor, reduce_op="sum"),
            all_gather=trainer.strategy.all_gather,
            no_sync=getattr(trainer.strategy, "block_backward_sync", nullcontext),
        )

    def _step_schedulers(self, interval: str) -> None:
        module: Any = self
        trainer = module.trainer
        count = trainer.global_step if interval == "step" else trainer.current_epoch + 1
        for config in trainer.lr_scheduler_configs:
            if config.interval != interval or count % config.frequency != 0:
                continue
            metric = None
            monitor = config.monitor or self.lr_scheduler_monitor
            if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if monitor is None:
                    raise ValueError(
                        "ReduceLROnPlateau needs a metric: Lightning ignores the scheduler's "
                        "'monitor' under manual optimisation, so pass "
                        "configure_balancing(..., lr_scheduler_monitor='val/loss')."
                    )
                metric = trainer.callback_metrics.get(monitor)
                if metric is None:
                    raise ValueError(
                        f"the LR scheduler monitors {monitor!r}, which is not logged; "
                        f"logged metrics: {sorted(trainer.callback_metrics)}."
                    )
            module.lr_scheduler_step(config.scheduler, metric)


def _config_or_none(strategy: GradientBalancingStrategy) -> dict[str, Any] | None:
    """The strategy's config, or ``None`` for one that has none (a wrapped torchjd module)."""
    try:
        return strategy.config()
    except TypeError:
        return None


def check_training_strategy(
    training_strategy: Any,
    strategies: Sequence[GradientBalancingStrategy],
    observers: Sequence[object] = (),
) -> None:
    """Refuse what sharded training strategies would silently get wrong.

    Under FSDP, DeepSpeed and Lightning's model-parallel strategy every parameter is sharded and
    its gradient is reduced by hooks on the ordinary backward pass. Per-objective gradients
    (Gramian and Jacobian strategies, gradient observers such as the angle logger) and the
    sharpness-aware perturbation are taken with ``torch.autograd.grad``, which those hooks never
    see, so they would be wrong (zeros, or one shard's values) without an error. Loss weightings
    train with one ordinary backward pass and work.

    Raises:
        ValueError: for a sharded strategy with anything but loss weightings, or with gradient
            observers.

    Example::

        >>> from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
        >>> from lightning_mtl.strategies import MGDA, PGI
        >>> check_training_strategy(DDPStrategy(), [MGDA()])  # DDP: every strategy works
        >>> check_training_strategy(FSDPStrategy(), [PGI()])  # loss weightings shard fine
        >>> check_training_strategy(FSDPStrategy(), [MGDA()])
        Traceback (most recent call last):
        ...
        ValueError: FSDPStrategy shards the parameters, ...
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    if not isinstance(training_strategy, FSDPStrategy | DeepSpeedStrategy | ModelParallelStrategy):
        return
    refused = [
        type(strategy).__name__
        for strategy in strategies
        if isinstance(strategy, SharpnessAware) or not isinstance(strategy, LossWeighting)
    ] + [type(observer).__name__ for observer in observers]
    if refused:
        raise ValueError(
            f"{type(training_strategy).__name__} shards the parameters, and the per-objective "
            f"gradients that {', '.join(refused)} would read are wrong there. Use a loss "
            "weighting (LinearScalarization, PGI, DWA, UW, RLW, FAMO) without gradient "
            "callbacks with it, or train with DDP (strategy='ddp'), where everything works."
        )
