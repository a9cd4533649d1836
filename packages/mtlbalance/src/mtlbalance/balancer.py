"""The Balancer: loss transform × aggregator × gradient engine."""

from __future__ import annotations

import copy
import functools
import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ._norms import exact_norm, overflow_message
from ._norms import norms as _norms
from ._params import FlatLayout, ParamSource, check_disjoint, named_params
from .aggregators.base import (
    Aggregation,
    Aggregator,
    GradientAggregator,
    LossWeighting,
    RepresentationWeighting,
)
from .aggregators.sum import Sum
from .engines import AutoEngine, BatchingUnsupported, Engine, EngineInputs, LoopEngine, make_engine
from .engines.base import write_row
from .stats import BalanceStats
from .transforms.base import LossTransform
from .transforms.identity import Identity

Losses = Mapping[str, Tensor] | Tensor | Sequence[Tensor]
Representation = Tensor | Sequence[Tensor] | None
LossScale = float | Tensor | None

_STATE_VERSION = 1


class Balancer:
    """Balances the gradients of several task losses, like an optimizer balances steps.

    ``backward(losses)`` replaces ``sum(losses).backward()``: it transforms the losses
    (``transform``), obtains what the aggregator needs (nothing more than one backward for
    loss-level methods; the ``(T, P)`` per-task gradients of the shared parameters from the
    ``engine`` for gradient-level methods; the per-task gradients at the shared representation
    for representation-level methods), and accumulates into ``.grad``:

    * shared parameters: the aggregated update;
    * task t's own parameters: ``w_t ∇ψ_t ℓ̃_t`` (``w_t = 1`` unless the aggregator weights the
      losses themselves, as Nash-MTL or MGDA do);
    * the transform's own learnable parameters: ``∇ Σ_t ℓ̃_t``;
    * the tables (``tables=``, approximate): ``∇ Σ_t c_t ℓ̃_t``, ``c_t`` the aggregator's weights.

    Args:
        shared: the shared parameters (a module, an iterable of parameters, or of
            ``(name, parameter)`` pairs). Parameters that do not require grad are ignored.
        task_params: task name -> that task's own parameters (same forms), optional.
        transform: a :class:`~mtlbalance.transforms.LossTransform` or its registry name.
        aggregator: an :class:`~mtlbalance.aggregators.Aggregator` or its registry name.
        engine: ``"auto"`` (measured on the first steps), ``"loop"``, ``"batched"``,
            ``"representation"``, or an :class:`~mtlbalance.engines.Engine`.
        tasks: task names in order. Defaults to the keys of ``task_params``, else of the first
            dict of losses (positions ``"0"``, ``"1"``, … for a tensor).
        max_update_norm: clip the norm of the shared update to this value (None: no clip).
        check_finite: before anything reaches ``.grad`` or the aggregator's state, check that
            losses and gradients are finite (and in the transform's domain) and raise a
            ``FloatingPointError`` naming the task otherwise. Costs one small device-to-host
            copy per step, after the gradients are computed. False skips it. With a
            ``loss_scale`` (see :meth:`backward`) non-finite gradients skip the step instead of
            raising, and that check runs even when this is False.
        deterministic: the auto engine picks by a fixed rule instead of timing.
        allow_unused: treat a shared parameter that no task reaches as having zero gradient
            instead of raising.
        chunk_size: rows per vmapped backward in the batched engines (None: all at once).
        retain_graph: keep the autograd graph after ``backward``.
        tables: large shared parameters (embedding tables) balanced *approximately*: shared by
            all tasks but kept out of the ``(T, P)`` matrix (no T dense copies, no per-task
            aggregator state for them). After the aggregator has run on the exact ``shared``
            part, they get ONE backward of ``Σ_t c_t ℓ̃_t``, with ``c_t`` the per-task weights
            the aggregator reports for the shared part (DB-MTL: ``α / (‖ĝ_t‖ + ε)``; loss- and
            representation-level methods: their loss weights, which makes this exact; a method
            that reports none: ``c_t = 1``, with a warning). Same forms as ``shared``; a
            parameter may not be in both. For the exact treatment, put the tables in
            ``shared`` instead. See docs/mtlbalance.md, "Large shared tables (approximate)".
    """

    def __init__(
        self,
        shared: ParamSource,
        task_params: Mapping[str, ParamSource] | None = None,
        *,
        transform: str | LossTransform = "identity",
        aggregator: str | Aggregator = "sum",
        engine: str | Engine = "auto",
        tasks: Sequence[str] | None = None,
        max_update_norm: float | None = None,
        check_finite: bool = True,
        deterministic: bool = False,
        allow_unused: bool = False,
        chunk_size: int | None = None,
        retain_graph: bool = False,
        tables: ParamSource | None = None,
    ):
        from .registry import resolve_aggregator, resolve_transform

        self.layout = FlatLayout(named_params(shared, "shared"))
        self._task_named: dict[str, list[tuple[str, Tensor]]] = {
            str(k): named_params(v, f"task_params[{k!r}]") for k, v in (task_params or {}).items()
        }
        shared_named = list(zip(self.layout.names, self.layout.params, strict=True))
        self._table_named: list[tuple[str, Tensor]] = (
            [] if tables is None else named_params(tables, "tables")
        )
        _check_table_overlap(shared_named, self._table_named)
        check_disjoint(shared_named + self._table_named, self._task_named)
        self._warned_factors = False
        self.transform = resolve_transform(transform)
        self.aggregator = resolve_aggregator(aggregator)
        if max_update_norm is not None and not max_update_norm > 0:
            raise ValueError(f"max_update_norm must be > 0 or None, got {max_update_norm}")
        self.max_update_norm = max_update_norm
        self.check_finite = check_finite
        self.allow_unused = allow_unused
        self.retain_graph = retain_graph
        self.engine_name = engine if isinstance(engine, str) else engine.name
        self.engine = make_engine(engine, chunk_size=chunk_size, deterministic=deterministic)
        self.step = 0
        self._fallback: str | None = None
        self._task_names: tuple[str, ...] | None = None
        self._jacobian: Tensor | None = None
        self._update_bufs: list[Tensor] = []
        self._update_views: list[list[Tensor]] = []
        self._acc: _Accumulation | None = None
        if tasks is not None:
            self._setup_tasks(tuple(str(t) for t in tasks))
        elif task_params is not None:
            self._setup_tasks(tuple(self._task_named))

    # ------------------------------------------------------------------ tasks
    @property
    def task_names(self) -> tuple[str, ...]:
        if self._task_names is None:
            raise RuntimeError(
                "the task names are not known yet: pass tasks=[...] (or task_params) to the "
                "Balancer, or call backward() once"
            )
        return self._task_names

    def _setup_tasks(self, names: tuple[str, ...]) -> None:
        if not names:
            raise ValueError("at least one task is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {list(names)}")
        unknown = set(self._task_named) - set(names)
        if unknown:
            raise ValueError(
                f"task_params names tasks {sorted(unknown)} that are not among the tasks "
                f"{list(names)}"
            )
        self._task_names = names
        self.transform.setup(names)
        self.aggregator.setup(names)

    # ------------------------------------------------------------------ parameters
    @property
    def tables(self) -> list[Tensor]:
        """The parameters balanced approximately (``tables=``), in order (empty without)."""
        return [p for _, p in self._table_named]

    def parameters(self) -> Iterator[nn.Parameter]:
        """The balancer's own learnable parameters (UW, IMTL-L, GradNorm, …) for an optimizer."""
        self.task_names  # noqa: B018 - raises a clear error if the tasks are not known yet
        yield from self.transform.parameters()
        yield from self.aggregator.parameters()

    # ------------------------------------------------------------------ backward
    def backward(
        self,
        losses: Losses,
        *,
        representation: Representation = None,
        loss_scale: LossScale = None,
    ) -> BalanceStats:
        """Balance the task losses and accumulate the result into ``.grad`` (see class doc).

        Mixed precision (fp16 autocast): pass the UNSCALED losses and the loss scale ``S``.
        Every backward through the network is then seeded with ``S ∂ℓ̃/∂ℓ`` (so small fp16
        gradients do not underflow), and every gradient it returns — the per-task rows, the
        task-specific gradients, the combined gradient of a loss-level method, the gradients
        at the representation — is divided by ``S`` (in the gradients' dtype, float32 for
        float32 master parameters) before the transform's factors, the aggregator, norms, ε
        or moving averages see it. ``.grad`` then holds UNSCALED gradients: do not call
        ``GradScaler.unscale_`` or ``GradScaler.step`` (step the optimizer yourself; only the
        scaler's ``update`` logic, or your own, is needed). If a gradient is not finite (the
        scaled backward overflowed), that is not an error: nothing is written to ``.grad``,
        the aggregator's state (EMA, step counts) and ``balancer.step`` are untouched, and the
        returned stats have ``skipped=True``: lower the scale and skip ``optimizer.step()``.
        This check costs one device-to-host copy and runs even with ``check_finite=False``.
        Non-finite losses still raise ``FloatingPointError`` (with ``check_finite``). The
        transform's own parameters (UW, IMTL-L) get gradients computed from the loss values,
        not through the network: they are never scaled. Bookkeeping a transform or a
        loss-weighting aggregator does in its forward from the (finite) losses — DWA's and
        STCH's loss averages, RLW's random draws, FAMO's remembered losses — happens before
        the gradients exist, so a skipped step keeps it, like the BatchNorm statistics of a
        step that ``GradScaler`` skips.

        Args:
            losses: dict task -> scalar loss, or a 1-D tensor / sequence of scalar losses in
                task order.
            representation: the shared representation(s) the task heads read; needed by the
                representation engine and representation-level methods, ignored otherwise.
            loss_scale: None (no scaling), a positive finite number, or a one-element
                floating-point tensor (e.g. a dynamic scale kept on the device; no host read
                beyond the step's one check).

        Returns:
            The step's :class:`~mtlbalance.BalanceStats` (``skipped`` as above).
        """
        raw = self._loss_list(losses)
        if self._acc is not None:
            raise RuntimeError(
                f"{self._acc.count} accumulated micro-batch(es) are pending: finish them with "
                f"backward_accumulated() (or give this one to accumulate() first)"
            )
        vec = torch.stack(raw)
        scale = _loss_scale(loss_scale, vec)
        scale_bad = None if scale is None else _scale_bad(scale)
        zs = _representation(representation)
        transformed, seed, transform_grads = self._apply_transform(vec)
        inputs = EngineInputs(
            losses=raw,
            seed=seed if scale is None else seed * scale,
            layout=self.layout,
            task_params=self._task_param_lists(),
            representation=zs,
        )
        kind = self.aggregator.requires
        if kind == "jacobian":
            stats = self._backward_jacobian(vec, transformed, inputs, scale, scale_bad)
        elif kind == "losses":
            assert isinstance(self.aggregator, LossWeighting)
            weights = self.aggregator(vec.detach(), transformed)
            stats = self._backward_weighted(vec, transformed, inputs, weights, scale, scale_bad)
        elif kind == "representation":
            if zs is None:
                raise ValueError(
                    f"{type(self.aggregator).__name__} works on the shared representation: call "
                    f"balancer.backward(losses, representation=z)"
                )
            assert isinstance(self.aggregator, RepresentationWeighting)
            rep_jac = self._representation_jacobian(inputs, zs)
            if scale is not None:  # unscaled in float32 at least (fp16 z: no new underflow)
                rep_jac = rep_jac.to(torch.promote_types(rep_jac.dtype, scale.dtype))
                rep_jac.div_(scale.to(rep_jac.device))
                # the weights must not come from an overflowed matrix (the QP would fail)
                norms = torch.linalg.vector_norm(rep_jac, dim=1)
                no_grads: list[list[Tensor | None]] = [[] for _ in raw]
                if self._check(vec, norms, no_grads, scale_bad=scale_bad, rows=rep_jac):
                    return self._skipped(vec, transformed, norms, None, None)
            weights = self.aggregator(rep_jac, losses=vec.detach())
            stats = self._backward_weighted(vec, transformed, inputs, weights, scale, scale_bad)
        else:  # pragma: no cover - guarded by the Aggregator types
            raise ValueError(f"unknown aggregator requirement {kind!r}")
        if stats.skipped:
            return stats
        return self._end_step(stats, transform_grads)

    def _backward_jacobian(
        self,
        vec: Tensor,
        transformed: Tensor,
        inputs: EngineInputs,
        scale: Tensor | None,
        scale_bad: Tensor | None,
    ) -> BalanceStats:
        jac = self._jacobian_buffer(vec.shape[0])
        result = self._run_engine(inputs, jac)
        engine_label = self._current_engine()  # "auto" for the auto engine's trial steps
        self._check_reached(result.reached)
        task_grads = result.task_grads
        if scale is not None:  # unscale before anything reads them
            _div_(jac, scale)
            task_grads = [_unscaled(gs, scale) for gs in task_grads]
        table_fn = None
        if self._table_named:

            def table_fn(factors: Tensor) -> list[Tensor | None]:
                return self._table_backward(inputs, factors, scale)

        return self._finish_jacobian(
            vec,
            transformed,
            jac,
            task_grads,
            inputs.task_params,
            engine_label,
            scale_bad,
            table_fn,
        )

    def _finish_jacobian(
        self,
        vec: Tensor,
        transformed: Tensor,
        jac: Tensor,
        task_grads: list[list[Tensor | None]],
        task_params: Sequence[Sequence[Tensor]],
        engine_label: str | None,
        scale_bad: Tensor | None = None,
        table_fn: Callable[[Tensor], list[Tensor | None]] | None = None,
    ) -> BalanceStats:
        """Check, aggregate and write, given the (T, P) rows ∇θ ℓ̃_t and the task gradients
        (unscaled; ``scale_bad`` is given when a loss scale was: then a non-finite gradient
        skips the step). ``table_fn(c)`` (with ``tables=``) returns the tables' unscaled
        gradients of ``Σ_t c_t ℓ̃_t`` for the factors the aggregator reports."""
        assert isinstance(self.aggregator, GradientAggregator)
        norm_dtype = self.layout.state_dtype()
        grad_norms = torch.linalg.vector_norm(jac, dim=1, dtype=norm_dtype)
        if self._check(vec, grad_norms, task_grads, scale_bad=scale_bad, rows=jac):
            return self._skipped(vec, transformed, grad_norms, None, engine_label)
        update_index, update = self._update_buffer()
        # the tables' gradients exist only after the aggregator ran: with a loss scale an
        # overflow there must still leave the aggregator's state untouched, so keep a copy
        saved = (
            copy.deepcopy(self.aggregator.state_dict())
            if table_fn is not None and scale_bad is not None
            else None
        )
        agg: Aggregation = self.aggregator(jac, update, losses=vec.detach())
        table_factors = None
        table_grads: list[Tensor | None] = []
        if table_fn is not None:
            table_factors = self._table_factors(agg.weights, vec)
            table_grads = table_fn(table_factors)
            if self._check_tables(table_grads, scale_bad):
                if saved is not None:
                    self.aggregator.load_state_dict(saved)
                return self._skipped(vec, transformed, grad_norms, agg.weights, engine_label)
        update_norm = self._clip([update, *(g for g in table_grads if g is not None)])
        self._assign_shared(update_index)
        _accumulate(self.tables, table_grads)
        task_weights = agg.task_weights
        for t, params in enumerate(task_params):
            grads = task_grads[t]
            if task_weights is not None:
                grads = [None if g is None else g * task_weights[t] for g in grads]
            _accumulate(params, grads)
        return BalanceStats(
            task_names=self.task_names,
            losses=vec.detach(),
            transformed=transformed,
            grad_norms=grad_norms,
            weights=agg.weights,
            update_norm=update_norm,
            engine=engine_label,
            table_factors=table_factors,
        )

    # ------------------------------------------------------------------ tables
    def _table_factors(self, weights: Tensor | None, vec: Tensor) -> Tensor:
        """The factors ``c_t`` of the tables' backward: the aggregator's reported per-task
        weights, or ones (with a one-time warning) for a method that reports none."""
        if weights is not None:
            return weights.detach().to(device=vec.device, dtype=vec.dtype)
        if not self._warned_factors:
            self._warned_factors = True
            name = self.aggregator.name or type(self.aggregator).__name__
            warnings.warn(
                f"mtlbalance: the {name!r} aggregator reports no per-task weights, so the "
                f"tables get the gradient of Σ_t ℓ̃_t (c_t = 1, as EW) while the shared "
                f"parameters get {name}'s update; put the tables in `shared` for the exact "
                f"treatment",
                stacklevel=4,
            )
        return torch.ones_like(vec.detach())

    def _table_backward(
        self, inputs: EngineInputs, factors: Tensor, scale: Tensor | None
    ) -> list[Tensor | None]:
        """One backward of ``Σ_t c_t ℓ̃_t`` (as ``Σ_s (cᵀ ∂ℓ̃/∂ℓ)_s ℓ_s``, seeded with the loss
        scale when there is one) into the tables only; returns unscaled gradients."""
        coef = _combine(inputs.seed, factors.to(inputs.seed.device))
        losses = list(inputs.losses)
        grads = torch.autograd.grad(
            losses,
            self.tables,
            grad_outputs=[coef[s].reshape(loss.shape) for s, loss in enumerate(losses)],
            retain_graph=self.retain_graph,
            allow_unused=True,
        )
        self._check_tables_reached([g is not None for g in grads])
        return list(grads) if scale is None else _unscaled_tables(grads, scale)

    def _check_tables_reached(self, reached: Sequence[bool]) -> None:
        if self.allow_unused:
            return
        missing = [n for (n, _), r in zip(self._table_named, reached, strict=True) if not r]
        if missing:
            raise ValueError(
                f"table(s) {', '.join(missing)} are reached by no task's loss; remove them from "
                f"`tables` (or freeze them), or pass allow_unused=True"
            )

    def _check_tables(self, grads: Sequence[Tensor | None], scale_bad: Tensor | None) -> bool:
        """The tables' gradients are finite (one more device-to-host copy; only with
        ``check_finite`` or a loss scale). True: skip the step (a loss scale was given)."""
        if scale_bad is None and not self.check_finite:
            return False
        named = [
            (n, g) for (n, _), g in zip(self._table_named, grads, strict=True) if g is not None
        ]
        if not named:
            return False
        bad = (~torch.isfinite(_norms([g for _, g in named]))).cpu().tolist()
        if not any(bad):
            return False
        found = [(n, g, exact_norm([g])) for (n, g), b in zip(named, bad, strict=True) if b]
        if scale_bad is not None and any(norm is None for *_, norm in found):
            return True
        name, grad, norm = found[0]
        if norm is not None:
            raise FloatingPointError(
                overflow_message(f"the gradient of table {name}", [grad], norm)
            )
        names = [n for n, _, norm in found if norm is None]
        raise FloatingPointError(
            f"the gradient of table(s) {', '.join(names)} is not finite; nothing was written to "
            f".grad (the aggregator has already taken this step's finite shared gradients)"
        )

    def _backward_weighted(
        self,
        vec: Tensor,
        transformed: Tensor,
        inputs: EngineInputs,
        weights: Tensor | None,
        scale: Tensor | None = None,
        scale_bad: Tensor | None = None,
    ) -> BalanceStats:
        """One backward of ``Σ_t w_t ℓ̃_t`` into shared and task parameters, taken as
        ``Σ_s c_s ℓ_s`` with ``c = wᵀ ∂ℓ̃/∂ℓ`` (one pass through every task's graph; with a
        loss scale S the seed, hence c, carries S, and the gradients are divided by S). The
        tables (``tables=``) are in the same backward: for these methods they are exact."""
        if weights is not None:
            weights = weights.detach()
        total = (vec * _combine(inputs.seed, weights)).sum()
        shared = self.layout.params
        tables = self.tables
        task_lists = inputs.task_params
        flat_task = [p for ps in task_lists for p in ps]
        grads: Sequence[Tensor | None] = torch.autograd.grad(
            total,
            [*shared, *flat_task, *tables],
            retain_graph=self.retain_graph,
            allow_unused=True,
        )
        num_dense = len(grads) - len(tables)
        table_grads = list(grads[num_dense:])
        grads = grads[:num_dense]
        if scale is not None:
            grads = _unscaled(grads, scale)
            table_grads = _unscaled_tables(table_grads, scale)
        shared_grads = list(grads[: len(shared)])
        self._check_reached([g is not None for g in shared_grads])
        self._check_tables_reached([g is not None for g in table_grads])
        task_grads: list[list[Tensor | None]] = []
        i = len(shared)
        for ps in task_lists:
            task_grads.append(list(grads[i : i + len(ps)]))
            i += len(ps)
        present = [g for g in [*shared_grads, *table_grads] if g is not None]
        shared_norms = _norms(present) if present else None
        if self._check(vec, None, task_grads, shared_norms, scale_bad=scale_bad, combined=present):
            return self._skipped(vec, transformed, None, weights, None)
        update_norm = self._clip(present, shared_norms)
        _accumulate(shared, shared_grads)
        _accumulate(tables, table_grads)
        for ps, gs in zip(task_lists, task_grads, strict=True):
            _accumulate(ps, gs)
        return BalanceStats(
            task_names=self.task_names,
            losses=vec.detach(),
            transformed=transformed,
            grad_norms=None,
            weights=weights,
            update_norm=update_norm,
            engine=None,
            table_factors=self._loss_table_factors(weights, vec),
        )

    def _loss_table_factors(self, weights: Tensor | None, vec: Tensor) -> Tensor | None:
        """Stats' ``table_factors`` of a method that weighs the losses: its weights (or 1)."""
        if not self._table_named:
            return None
        if weights is None:
            return torch.ones_like(vec.detach())
        return weights.detach().to(device=vec.device, dtype=vec.dtype)

    # ------------------------------------------------------------------ accumulation
    def accumulate(
        self,
        losses: Losses,
        *,
        representation: Representation = None,
        loss_scale: LossScale = None,
    ) -> None:
        """Gradient accumulation: store one micro-batch's raw per-task gradients and losses;
        nothing is written to ``.grad``. After the last micro-batch, :meth:`backward_accumulated`
        transforms and aggregates ONCE, on the means over the micro-batches: the result equals
        ``backward`` on the whole batch (for mean-reduced losses on equal micro-batches), since
        ``∇ log(mean_m ℓ_m) = mean_m ∇ℓ_m / mean_m ℓ_m`` — not the mean of per-micro-batch
        balanced updates. DB-MTL's step count k advances once per optimizer step.

        ``loss_scale`` is as in :meth:`backward`: the micro-batch's backward is seeded with S
        and its gradients are divided by S before they are stored, so the stored sums are
        always unscaled (micro-batches may use different scales). Nothing is read on the host
        here: a non-finite gradient (an overflow) stays in the sums — inf and NaN survive
        addition — and :meth:`backward_accumulated` then skips the whole step (``skipped=True``,
        nothing written) if any micro-batch was given a loss scale.

        Costs one backward per task per micro-batch (one in all for EW) and a second (T, P)
        buffer. Representation-level methods (MGDA-UB) cannot accumulate: their weights need
        the whole batch's representation gradients.

        With ``tables=``, the factors of the tables' backward are known only at the end, so each
        micro-batch also takes one backward per task into the tables and keeps T per-task sums
        of the tables' gradients until :meth:`backward_accumulated` (T copies of a dense
        table's gradient; sparse gradients, ``nn.EmbeddingBag(sparse=True)``, stay sparse). EW
        needs one sum only.
        """
        if self.aggregator.requires == "representation":
            raise ValueError(
                f"{type(self.aggregator).__name__} weighs the gradients at the shared "
                f"representation of the whole batch and cannot accumulate micro-batches; use a "
                f"larger batch, or the parameter-level variant (e.g. mgda instead of mgda_ub)"
            )
        raw = self._loss_list(losses)
        vec = torch.stack(raw).detach()
        scale = _loss_scale(loss_scale, vec)
        task_params = self._task_param_lists()
        plain_sum = (
            type(self.transform) is Identity
            and type(self.aggregator) is Sum
            and not any(True for _ in self.transform.parameters())
        )
        tables = self.tables
        table_rows: list[list[Tensor | None]] = []
        owned_tables: list[list[Tensor | None]]
        if plain_sum:  # EW: the sum of the task gradients is all that is needed
            flat_task = [p for ps in task_params for p in ps]
            grads = torch.autograd.grad(
                torch.stack(raw).sum(),
                [*self.layout.params, *flat_task, *tables],
                grad_outputs=scale,
                retain_graph=self.retain_graph,
                allow_unused=True,
            )
            table_rows = [list(grads[len(grads) - len(tables) :])]
            grads = grads[: len(grads) - len(tables)]
            shared = grads[: len(self.layout.params)]
            rows = torch.empty(
                1, self.layout.total, device=self.layout.device, dtype=self.layout.dtype
            )
            write_row(rows[0], shared, self.layout)
            reached = [g is not None for g in shared]
            task_grads: list[list[Tensor | None]] = []
            i = len(self.layout.params)
            for ps in task_params:
                task_grads.append(list(grads[i : i + len(ps)]))
                i += len(ps)
        else:  # raw rows ∇θ ℓ_t; the transform's seed is applied to the means at the end
            inputs = EngineInputs(
                losses=raw,
                seed=torch.ones_like(vec) if scale is None else scale.expand_as(vec).clone(),
                layout=self.layout,
                task_params=task_params,
                representation=_representation(representation),
            )
            rows = self._jacobian_buffer(len(raw))
            result = self._run_engine(inputs, rows)
            reached, task_grads = result.reached, result.task_grads
            for t, loss in enumerate(raw) if tables else ():
                keep = self.retain_graph or t < len(raw) - 1
                table_rows.append(
                    list(
                        torch.autograd.grad(
                            loss, tables, grad_outputs=scale, retain_graph=keep, allow_unused=True
                        )
                    )
                )
        if scale is None:  # (the accumulation owns what it stores: copies)
            owned = [[None if g is None else g.detach().clone() for g in gs] for gs in task_grads]
            owned_tables = [
                [None if g is None else g.detach().clone() for g in gs] for gs in table_rows
            ]
            scale_bad = None
        else:  # the division makes the copies
            _div_(rows, scale)
            owned = [_unscaled(gs, scale) for gs in task_grads]
            owned_tables = [_unscaled_tables(gs, scale) for gs in table_rows]
            scale_bad = _scale_bad(scale)
        table_reached = [any(gs[j] is not None for gs in table_rows) for j in range(len(tables))]
        acc = self._acc
        if acc is None:
            self._acc = _Accumulation(
                count=1,
                loss_sum=vec.clone(),
                rows=rows.clone(),
                task_grads=owned,
                reached=list(reached),
                plain_sum=plain_sum,
                engine=None if plain_sum else self._current_engine(),
                scale_bad=scale_bad,
                table_grads=owned_tables,
                table_reached=table_reached,
            )
            return
        acc.count += 1
        acc.loss_sum += vec
        acc.rows += rows
        acc.reached = [a or b for a, b in zip(acc.reached, reached, strict=True)]
        if scale_bad is not None:
            acc.scale_bad = scale_bad if acc.scale_bad is None else acc.scale_bad | scale_bad
        acc.table_reached = [a or b for a, b in zip(acc.table_reached, table_reached, strict=True)]
        for own, new in zip(
            [*acc.task_grads, *acc.table_grads], [*owned, *owned_tables], strict=True
        ):
            for i, g in enumerate(new):
                if g is not None:
                    prev = own[i]
                    own[i] = g if prev is None else prev.add_(g)

    def backward_accumulated(self) -> BalanceStats:
        """Balance the micro-batches given to :meth:`accumulate` since the last step and
        accumulate the result into ``.grad`` (see :meth:`backward`). The stored gradients are
        already unscaled, so there is no ``loss_scale`` here; if any micro-batch had one and
        some gradient is not finite, the whole step is skipped (``skipped=True``, nothing
        written, the micro-batches dropped)."""
        acc = self._acc
        if acc is None:
            raise RuntimeError("no micro-batches to balance: call accumulate(losses) first")
        self._acc = None  # a failed check below writes nothing and drops the micro-batches
        vec = acc.loss_sum / acc.count
        transformed, seed, transform_grads = self._apply_transform(vec)
        self._check_reached(acc.reached)
        self._check_tables_reached(acc.table_reached)
        rows = acc.rows.div_(acc.count)
        task_params = self._task_param_lists()
        count = acc.count
        if self.aggregator.requires == "jacobian":
            # row t = Σ_s D_ts mean ∇ℓ_s; task t's own parameters: D_tt mean ∇ψ_t ℓ_t
            diagonal = seed if seed.dim() == 1 else seed.diagonal()
            if seed.dim() == 1:
                rows.mul_(seed[:, None].to(rows.dtype))
            else:
                rows = seed.to(rows.dtype) @ rows
            task_grads = _scaled(acc.task_grads, diagonal / count)
            table_fn = None
            if self._table_named:  # ∇ Σ_t c_t ℓ̃_t = Σ_s (cᵀ D)_s mean ∇ℓ_s

                def table_fn(factors: Tensor) -> list[Tensor | None]:
                    coef = _combine(seed, factors.to(seed.device)) / count
                    return _combine_sums(acc.table_grads, coef)

            stats = self._finish_jacobian(
                vec,
                transformed,
                rows,
                task_grads,
                task_params,
                acc.engine,
                acc.scale_bad,
                table_fn,
            )
        else:
            assert isinstance(self.aggregator, LossWeighting)
            weights = self.aggregator(vec, transformed)
            coef = _combine(seed, weights)  # as the weighted backward's Σ_s c_s ℓ_s
            update = rows[0] if acc.plain_sum else torch.mv(rows.T, coef.to(rows.dtype))
            task_grads = _scaled(acc.task_grads, coef / count)
            row_factors = (  # plain EW keeps one row Σ_t ∇ℓ_t
                torch.full((1,), 1.0 / count, dtype=coef.dtype, device=coef.device)
                if acc.plain_sum
                else coef / count
            )
            table_grads = _combine_sums(acc.table_grads, row_factors)
            stats = self._finish_combined(
                vec,
                transformed,
                update,
                task_grads,
                task_params,
                weights,
                acc.scale_bad,
                table_grads,
            )
        if stats.skipped:
            return stats
        return self._end_step(stats, transform_grads)

    def _end_step(
        self, stats: BalanceStats, transform_grads: list[Tensor | None] | None
    ) -> BalanceStats:
        if transform_grads is not None:
            _accumulate(self._transform_params(), transform_grads)
        self.step += 1
        return stats

    def _skipped(
        self,
        vec: Tensor,
        transformed: Tensor,
        grad_norms: Tensor | None,
        weights: Tensor | None,
        engine_label: str | None,
    ) -> BalanceStats:
        """The stats of a step skipped for a non-finite scaled gradient (nothing written)."""
        return BalanceStats(
            task_names=self.task_names,
            losses=vec.detach(),
            transformed=transformed,
            grad_norms=grad_norms,
            weights=weights,
            update_norm=None,
            engine=engine_label,
            skipped=True,
        )

    def _task_param_lists(self) -> list[list[Tensor]]:
        """Each task's own parameters, in task order."""
        return [[p for _, p in self._task_named.get(n, [])] for n in self.task_names]

    def _transform_params(self) -> list[nn.Parameter]:
        return [p for p in self.transform.parameters() if p.requires_grad]

    def _finish_combined(
        self,
        vec: Tensor,
        transformed: Tensor,
        update: Tensor,
        task_grads: list[list[Tensor | None]],
        task_params: Sequence[Sequence[Tensor]],
        weights: Tensor | None,
        scale_bad: Tensor | None = None,
        table_grads: Sequence[Tensor | None] = (),
    ) -> BalanceStats:
        """Write an already combined (P,) shared update, the tables' gradients and the task
        gradients."""
        present_tables = [g for g in table_grads if g is not None]
        norm = _norms([update, *present_tables])
        if self._check(
            vec, None, task_grads, norm, scale_bad=scale_bad, combined=[update, *present_tables]
        ):
            return self._skipped(vec, transformed, None, weights, None)
        index, buf = self._update_buffer()
        buf.copy_(update)
        update_norm = self._clip([buf, *present_tables], norm)
        self._assign_shared(index)
        _accumulate(self.tables, table_grads)
        for ps, gs in zip(task_params, task_grads, strict=True):
            _accumulate(ps, gs)
        return BalanceStats(
            task_names=self.task_names,
            losses=vec,
            transformed=transformed,
            grad_norms=None,
            weights=weights,
            update_norm=update_norm,
            engine=None,
            table_factors=self._loss_table_factors(weights, vec),
        )

    # ------------------------------------------------------------------ pieces
    def _loss_list(self, losses: Losses) -> list[Tensor]:
        if isinstance(losses, Mapping):
            names = tuple(str(k) for k in losses)
            if self._task_names is None:
                self._setup_tasks(names)
            expected = self.task_names
            unknown = [n for n in names if n not in expected]
            missing = [n for n in expected if n not in names]
            if unknown or missing:
                parts = []
                if unknown:
                    parts.append(f"unknown task(s) {unknown}")
                if missing:
                    parts.append(f"missing loss for task(s) {missing}")
                raise ValueError(
                    f"{' and '.join(parts)}; the balancer's tasks are {list(expected)}"
                )
            items = [(n, losses[n]) for n in expected]
        else:
            if isinstance(losses, Tensor):
                if losses.dim() != 1:
                    raise ValueError(
                        f"losses must be a dict task -> scalar loss or a 1-D tensor of task "
                        f"losses; got a tensor of shape {tuple(losses.shape)}"
                    )
                seq: Sequence[Tensor] = list(losses.unbind(0))
            else:
                seq = list(losses)
            if self._task_names is None:
                self._setup_tasks(tuple(str(i) for i in range(len(seq))))
            if len(seq) != len(self.task_names):
                raise ValueError(
                    f"got {len(seq)} losses for {len(self.task_names)} tasks "
                    f"{list(self.task_names)}"
                )
            items = list(zip(self.task_names, seq, strict=True))
        for name, loss in items:
            if not isinstance(loss, Tensor):
                raise TypeError(f"loss of task {name!r} is a {type(loss).__name__}, not a tensor")
            if loss.numel() != 1:
                raise ValueError(
                    f"loss of task {name!r} has shape {tuple(loss.shape)}; each task loss must be "
                    f"a scalar (reduce it, e.g. with .mean())"
                )
            if not loss.requires_grad:
                raise ValueError(
                    f"loss of task {name!r} does not require grad; was it computed under "
                    f"torch.no_grad() or detached?"
                )
        dtype = functools.reduce(
            torch.promote_types, [loss.dtype for _, loss in items], torch.float32
        )
        # (ε, logs and norms in float32 at least)
        return [loss.reshape(()).to(dtype) for _, loss in items]

    def _apply_transform(self, vec: Tensor) -> tuple[Tensor, Tensor, list[Tensor | None] | None]:
        """The transform runs on a detached copy of the losses, so its Jacobian ``∂ℓ̃/∂ℓ``
        (the engines' backward seed) and its own parameters' gradients come from a tiny graph."""
        leaf = vec.detach().requires_grad_(True)
        transformed = self.transform(leaf)
        if transformed.shape != vec.shape:
            raise ValueError(
                f"{type(self.transform).__name__} returned shape {tuple(transformed.shape)} for "
                f"{vec.shape[0]} losses; a transform must return one value per task"
            )
        params = self._transform_params()
        if self.transform.elementwise:
            grads = torch.autograd.grad(
                transformed.sum(), [leaf, *params], retain_graph=False, allow_unused=True
            )
            seed = _zero_if_none(grads[0], leaf)
            param_grads: list[Tensor | None] | None = list(grads[1:]) if params else None
        else:
            rows = [
                _zero_if_none(
                    torch.autograd.grad(transformed[t], leaf, retain_graph=True, allow_unused=True)[
                        0
                    ],
                    leaf,
                )
                for t in range(vec.shape[0])
            ]
            seed = torch.stack(rows)
            param_grads = (
                list(torch.autograd.grad(transformed.sum(), params, allow_unused=True))
                if params
                else None
            )
        return transformed.detach(), seed.detach(), param_grads

    def _representation_jacobian(self, inputs: EngineInputs, zs: tuple[Tensor, ...]) -> Tensor:
        rows = []
        for t in range(inputs.num_tasks):
            outputs, seeds = inputs.row_seed(t)
            grads = torch.autograd.grad(
                outputs, zs, grad_outputs=seeds, retain_graph=True, allow_unused=True
            )
            rows.append(
                torch.cat(
                    [
                        (torch.zeros_like(z) if g is None else g).reshape(-1)
                        for z, g in zip(zs, grads, strict=True)
                    ]
                )
            )
        return torch.stack(rows)

    def _run_engine(self, inputs: EngineInputs, out: Tensor) -> Any:
        if self.engine.needs_representation and inputs.representation is None:
            raise ValueError(
                "the representation engine needs the shared representation: call "
                "balancer.backward(losses, representation=z)"
            )
        # with tables, one more backward (into the tables) follows the engine's
        retain = self.retain_graph or bool(self._table_named)
        try:
            return self.engine.compute(inputs, out, retain)
        except BatchingUnsupported as err:
            warnings.warn(
                f"mtlbalance: the {self.engine.name} engine cannot vmap {err.op}; falling back "
                f"to the loop engine for the rest of the run (for an RNN, "
                f"mtlbalance.without_cudnn_rnn(model) makes it batchable)",
                stacklevel=3,
            )
            self._fallback = self.engine.name
            self.engine = LoopEngine()
            return self.engine.compute(inputs, out, retain)

    def _current_engine(self) -> str:
        if isinstance(self.engine, AutoEngine):
            return self.engine.current
        return self.engine.name

    def _jacobian_buffer(self, num_tasks: int) -> Tensor:
        shape = (num_tasks, self.layout.total)
        if self._jacobian is None or self._jacobian.shape != shape:
            self._jacobian = torch.empty(shape, device=self.layout.device, dtype=self.layout.dtype)
        return self._jacobian

    def _update_buffer(self) -> tuple[int, Tensor]:
        """One of two flat update buffers, the one no shared ``.grad`` is a view of (so a
        ``.grad`` left from the last step is accumulated into, never overwritten)."""
        if not self._update_bufs:
            for _ in range(2):
                buf = torch.empty(
                    self.layout.total, device=self.layout.device, dtype=self.layout.dtype
                )
                self._update_bufs.append(buf)
                self._update_views.append(self.layout.views(buf))
        for index, views in enumerate(self._update_views):
            if not any(
                p.grad is not None and p.grad.data_ptr() == v.data_ptr()
                for p, v in zip(self.layout.params, views, strict=True)
            ):
                return index, self._update_bufs[index]
        raise AssertionError("unreachable: the two update buffers cannot both be in use")

    def _assign_shared(self, index: int) -> None:
        views = self._update_views[index]
        add_to, add_from = [], []
        for p, v in zip(self.layout.params, views, strict=True):
            if p.grad is None:
                p.grad = v
            else:
                add_to.append(p.grad)
                add_from.append(v)
        if add_to:
            torch._foreach_add_(add_to, add_from)

    def _clip(self, tensors: list[Tensor], norms: Tensor | None = None) -> Tensor | None:
        if not tensors:
            return None
        norm = torch.linalg.vector_norm(_norms(tensors) if norms is None else norms)
        if self.max_update_norm is None:
            return norm
        scale = (self.max_update_norm / norm.clamp_min(1e-30)).clamp(max=1.0)
        groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for t in tensors:
            if t.is_sparse:  # (the tables' sparse gradients)
                t.mul_(scale.to(device=t.device, dtype=t.dtype))
            else:
                groups.setdefault((t.dtype, t.device), []).append(t)
        for (dtype, device), group in groups.items():
            torch._foreach_mul_(group, scale.to(device=device, dtype=dtype))
        return norm * scale

    def _check_reached(self, reached: Sequence[bool]) -> None:
        if self.allow_unused:
            return
        missing = [n for n, r in zip(self.layout.names, reached, strict=True) if not r]
        if missing:
            shown = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            raise ValueError(
                f"shared parameter(s) {shown} are reached by no task's loss; remove them from "
                f"the shared parameters (or freeze them), or pass allow_unused=True"
            )

    def _check(
        self,
        vec: Tensor,
        grad_norms: Tensor | None,
        task_grads: Sequence[Sequence[Tensor | None]],
        shared_norms: Tensor | None = None,
        *,
        scale_bad: Tensor | None = None,
        rows: Tensor | None = None,
        combined: Sequence[Tensor] = (),
    ) -> bool:
        """One device-to-host copy of per-task flags; raises before anything is written.

        Without a loss scale (``scale_bad`` None) this runs only with ``check_finite`` and a
        non-finite gradient raises. With one (``scale_bad``: the flag of an invalid tensor
        scale) it always runs, and a non-finite gradient returns True (skip the step) instead;
        non-finite losses and domain violations still raise when ``check_finite`` is set.

        ``grad_norms`` are the norms of ``rows`` (per task), ``shared_norms`` those of
        ``combined``: a flagged gradient is looked at again (rare path) so that a finite one
        whose norm overflows is reported as such, with its norm computed without overflow,
        and raises even with a loss scale (a smaller scale would not help)."""
        if scale_bad is None and not self.check_finite:
            return False
        num_tasks = vec.shape[0]
        det = vec.detach()
        flags = [~torch.isfinite(det)]
        domain = self.transform.domain_violation(det)
        flags.append(torch.zeros_like(flags[0]) if domain is None else domain)
        flags.append(
            torch.zeros_like(flags[0]) if grad_norms is None else ~torch.isfinite(grad_norms)
        )
        own = []
        for grads in task_grads:
            present = [g for g in grads if g is not None]
            if present:
                own.append(~torch.isfinite(_norms(present)).all())
            else:
                own.append(torch.zeros((), dtype=torch.bool, device=det.device))
        flags.append(torch.stack(own).to(det.device))
        shared_bad = torch.zeros((), dtype=torch.bool, device=det.device)
        if shared_norms is not None:
            shared_bad = ~torch.isfinite(shared_norms).all().to(det.device)
        scale_flag = torch.zeros((), dtype=torch.bool, device=det.device)
        if scale_bad is not None:
            scale_flag = scale_bad.to(det.device)
        host = (
            torch.cat(
                [torch.stack(flags).reshape(-1), shared_bad.reshape(1), scale_flag.reshape(1)]
            )
            .cpu()
            .tolist()
        )
        bad_loss, bad_domain, bad_grad, bad_own = (
            host[i * num_tasks : (i + 1) * num_tasks] for i in range(4)
        )
        if host[-1]:
            raise ValueError(
                "loss_scale must be a positive finite number; the loss_scale tensor given holds "
                "a zero, negative or non-finite value (nothing was written to .grad or to the "
                "balancer's state)"
            )
        names = self.task_names
        if not self.check_finite:
            bad_loss = bad_domain = [False] * num_tasks
        skip = scale_bad is not None
        values = det.cpu().tolist() if any(bad_loss) or any(bad_domain) else []
        for t in range(num_tasks):
            if bad_loss[t]:
                raise FloatingPointError(
                    f"loss of task {names[t]!r} is {values[t]}; nothing was written to .grad or "
                    f"to the balancer's state"
                )
        for t in range(num_tasks):
            if bad_domain[t]:
                raise ValueError(
                    f"loss of task {names[t]!r} is {values[t]:g}: {self.transform.domain_message()}"
                )
        flagged: list[tuple[str, list[Tensor], str]] = []  # (subject, tensors, not-finite msg)
        for t in range(num_tasks):
            if bad_grad[t] or bad_own[t]:
                where = "shared" if bad_grad[t] else "task-specific"
                if bad_grad[t] and rows is not None:
                    tensors = [rows[t]]
                else:
                    tensors = [g for g in task_grads[t] if g is not None]
                subject = f"the gradient of task {names[t]!r} w.r.t. its {where} parameters"
                flagged.append(
                    (subject, tensors, f"{subject} is not finite (loss {float(det[t]):g})")
                )
        if host[-2]:
            subject = "the combined gradient of the shared parameters"
            flagged.append((subject, list(combined), f"{subject} is not finite"))
        if not flagged:
            return False
        found = [(s, ts, m, exact_norm(ts) if ts else None) for s, ts, m in flagged]
        if skip and any(n is None for *_, n in found):
            return True  # an overflow of the scaled backward: the caller skips the step
        subject, tensors, message, norm = found[0]
        if norm is not None:
            raise FloatingPointError(overflow_message(subject, tensors, norm))
        raise FloatingPointError(
            f"{message}; nothing was written to .grad or to the balancer's state"
        )

    # ------------------------------------------------------------------ hooks
    def epoch_end(self) -> None:
        """Call at the end of every epoch (DWA, STCH keep per-epoch loss history)."""
        self.transform.epoch_end()
        self.aggregator.epoch_end()

    def after_step(self, losses: Losses) -> None:
        """Call after ``optimizer.step()`` with the losses of the same batch recomputed at the
        new parameters, for methods that need them (FAMO). No gradients are taken."""
        with torch.no_grad():
            if isinstance(losses, Mapping):
                missing = [n for n in self.task_names if n not in losses]
                if missing or len(losses) != len(self.task_names):
                    raise ValueError(
                        f"after_step needs one loss per task {list(self.task_names)}, got "
                        f"{list(losses)}"
                    )
                vec = torch.stack([losses[n].detach().reshape(()) for n in self.task_names])
            else:
                vec = torch.stack([t.detach().reshape(()) for t in losses])
        self.transform.after_step(vec)
        self.aggregator.after_step(vec)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue a run bit for bit: step counts, moving averages,
        learnable parameters, loss history, the engine chosen."""
        engine_state: dict[str, Any] = {"name": self.engine.name, "state": self.engine.state()}
        if self._fallback is not None:
            engine_state["fallback_from"] = self._fallback
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "task_names": None if self._task_names is None else list(self._task_names),
            "step": self.step,
            "transform": self.transform.state_dict(),
            "aggregator": self.aggregator.state_dict(),
            "engine": engine_state,
        }
        if self._table_named:  # (the tables keep no state; their shapes check a resume)
            state["tables"] = {n: list(p.shape) for n, p in self._table_named}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported balancer state version {state.get('version')!r}")
        names = state.get("task_names")
        if names is not None:
            names = tuple(names)
            if self._task_names is None:
                self._setup_tasks(names)
            elif names != self._task_names:
                raise ValueError(
                    f"the saved state is for tasks {list(names)}, this balancer has "
                    f"{list(self._task_names)}"
                )
        saved_tables = state.get("tables", {})
        own_tables = {n: list(p.shape) for n, p in self._table_named}
        if saved_tables != own_tables:
            raise ValueError(
                f"the saved state was made with tables {saved_tables or 'none'} (name: shape), "
                f"this balancer has {own_tables or 'none'}; the aggregator's state covers the "
                f"`shared` parameters only, so a run resumes with the same split between "
                f"`shared` and `tables` (build the balancer with the same tables=)"
            )
        self.transform.load_state_dict(state["transform"])
        self.aggregator.load_state_dict(state["aggregator"])
        self.step = int(state["step"])
        engine_state = state.get("engine", {})
        if "fallback_from" in engine_state:
            self._fallback = engine_state["fallback_from"]
            self.engine = LoopEngine()
        elif engine_state.get("name") == self.engine.name:
            self.engine.load_state(engine_state.get("state", {}))

    def reset(self) -> None:
        """Start fresh: step counts, moving averages, loss history, learnable parameters. The
        engine the auto engine chose is kept (it describes the model, not the training)."""
        self.transform.reset()
        self.aggregator.reset()
        self.step = 0

    def __repr__(self) -> str:
        tasks = list(self._task_names) if self._task_names is not None else "?"
        return (
            f"Balancer(tasks={tasks}, transform={self.transform}, aggregator={self.aggregator}, "
            f"engine={self._current_engine()!r}, shared={len(self.layout.params)} tensors / "
            f"{self.layout.total} values"
            + (
                f", tables={len(self._table_named)} tensors / "
                f"{sum(p.numel() for p in self.tables)} values (approximate)"
                if self._table_named
                else ""
            )
            + ")"
        )


@dataclass
class _Accumulation:
    """Sums over the micro-batches of one optimizer step."""

    count: int
    loss_sum: Tensor
    rows: Tensor  # (T, P) raw rows ∇θ ℓ_t, or (1, P) Σ_t ∇θ ℓ_t for plain EW
    task_grads: list[list[Tensor | None]]
    reached: list[bool]
    plain_sum: bool
    engine: str | None
    scale_bad: Tensor | None = None  # set when a micro-batch had a loss scale (invalid flag)
    # the tables' gradient sums: per task ∇ℓ_t (or one row Σ_t ∇ℓ_t for plain EW)
    table_grads: list[list[Tensor | None]] = field(default_factory=list)
    table_reached: list[bool] = field(default_factory=list)


def _check_table_overlap(
    shared: list[tuple[str, Tensor]], tables: list[tuple[str, Tensor]]
) -> None:
    """A parameter is balanced exactly (``shared``) or approximately (``tables``), not both."""
    in_shared = {id(p): n for n, p in shared}
    seen: dict[int, str] = {}
    for name, p in tables:
        if id(p) in in_shared:
            raise ValueError(
                f"{name} is also given as {in_shared[id(p)]}; a parameter is balanced either "
                f"exactly (in `shared`, as a row of the (T, P) matrix) or approximately (in "
                f"`tables`), not both: remove it from one of them"
            )
        if id(p) in seen:
            raise ValueError(f"{name} is listed twice among the tables ({seen[id(p)]})")
        seen[id(p)] = name


def _unscaled_tables(grads: Sequence[Tensor | None], scale: Tensor) -> list[Tensor | None]:
    """The tables' ``g / scale`` out of place, computed in float32 at least and stored in the
    gradient's dtype (sparse gradients stay sparse); None stays None."""
    out: list[Tensor | None] = []
    for g in grads:
        if g is None:
            out.append(None)
            continue
        wide = torch.promote_types(torch.promote_types(g.dtype, scale.dtype), torch.float32)
        out.append((g.to(wide) / scale.to(device=g.device, dtype=wide)).to(g.dtype))
    return out


def _combine_sums(rows: list[list[Tensor | None]], factors: Tensor) -> list[Tensor | None]:
    """``Σ_r factors[r] · rows[r][j]`` for each table j, in place (the accumulation owns the
    sums); a table no row reached stays None."""
    out: list[Tensor | None] = []
    for j in range(len(rows[0]) if rows else 0):
        total: Tensor | None = None
        for r, row in enumerate(rows):
            g = row[j]
            if g is None:
                continue
            g.mul_(factors[r].to(device=g.device, dtype=g.dtype))
            total = g if total is None else total.add_(g)
        out.append(total)
    return out


def _representation(rep: Representation) -> tuple[Tensor, ...] | None:
    if rep is None:
        return None
    zs = (rep,) if isinstance(rep, Tensor) else tuple(rep)
    for i, z in enumerate(zs):
        if not isinstance(z, Tensor) or z.grad_fn is None:
            raise ValueError(
                f"representation[{i}] must be the output of the shared part of the model, "
                f"attached to the autograd graph (not detached, not a leaf)"
            )
    return zs


def _loss_scale(loss_scale: LossScale, like: Tensor) -> Tensor | None:
    """``loss_scale`` as a 0-dim tensor on the losses' device and dtype (None stays None).

    A number is validated here; a tensor's value is validated with the step's one host
    check (see :func:`_scale_bad`), so a scale kept on the device costs no extra sync."""
    if loss_scale is None:
        return None
    if isinstance(loss_scale, Tensor):
        if loss_scale.numel() != 1:
            raise ValueError(
                f"loss_scale must be a number or a one-element tensor, got a tensor of shape "
                f"{tuple(loss_scale.shape)}"
            )
        if loss_scale.dtype == torch.bool or loss_scale.is_complex():
            raise ValueError(
                f"loss_scale must be a real number or a floating-point tensor, got a "
                f"{loss_scale.dtype} tensor"
            )
        return loss_scale.detach().reshape(()).to(device=like.device, dtype=like.dtype)
    if isinstance(loss_scale, bool) or not isinstance(loss_scale, numbers.Real):
        raise ValueError(
            f"loss_scale must be None, a positive number or a one-element tensor, got "
            f"{type(loss_scale).__name__} {loss_scale!r}"
        )
    value = float(loss_scale)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"loss_scale must be a positive finite number (e.g. 2.0**16), got {loss_scale!r}"
        )
    finfo = torch.finfo(like.dtype)
    if not finfo.tiny <= value <= finfo.max:
        raise ValueError(
            f"loss_scale {value:g} is not representable in the losses' dtype {like.dtype}; "
            f"use a smaller scale"
        )
    return torch.full((), value, dtype=like.dtype, device=like.device)


def _scale_bad(scale: Tensor) -> Tensor:
    """Device flag: the loss scale is zero, negative or not finite."""
    return ~(torch.isfinite(scale) & (scale > 0))


def _div_(tensor: Tensor, scale: Tensor) -> None:
    """``tensor /= scale`` in place, at least in float32 (a half tensor is divided in float32:
    a scale such as 2**16 does not fit in float16)."""
    if tensor.dtype == scale.dtype:
        tensor.div_(scale)
    else:
        wide = torch.promote_types(torch.promote_types(tensor.dtype, scale.dtype), torch.float32)
        tensor.copy_(tensor.to(wide).div_(scale.to(device=tensor.device, dtype=wide)))


def _unscaled(grads: Sequence[Tensor | None], scale: Tensor) -> list[Tensor | None]:
    """``g / scale`` for each gradient, out of place (autograd may return views or expanded
    tensors), at least in float32; None stays None."""
    present = [g for g in grads if g is not None]
    if not present:
        return list(grads)
    if all(g.dtype == scale.dtype and g.device == scale.device for g in present):
        divided = list(torch._foreach_div(present, scale))
    else:
        divided = []
        for g in present:
            out = g.detach().clone()
            _div_(out, scale)
            divided.append(out)
    it = iter(divided)
    return [None if g is None else next(it) for g in grads]


def _combine(seed: Tensor, weights: Tensor | None) -> Tensor:
    """``c = wᵀ ∂ℓ̃/∂ℓ``: the coefficients of the raw losses in ``Σ_t w_t ℓ̃_t``."""
    w = None if weights is None else weights.detach().to(seed.dtype)
    if seed.dim() == 1:
        return seed if w is None else seed * w
    return seed.sum(0) if w is None else w @ seed


def _scaled(grads: list[list[Tensor | None]], factors: Tensor) -> list[list[Tensor | None]]:
    """Task t's gradients times ``factors[t]``, in place (the accumulation owns them)."""
    return [
        [None if g is None else g.mul_(factors[t].to(g.dtype)) for g in gs]
        for t, gs in enumerate(grads)
    ]


def _zero_if_none(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g


def _accumulate(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g.detach()
        else:
            p.grad.add_(g)
