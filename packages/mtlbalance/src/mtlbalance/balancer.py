"""The Balancer: loss transform × aggregator × gradient engine, run as a step pipeline."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import _params
from ._params import FlatLayout, ParamSource, check_disjoint, check_table_overlap, named_params
from ._step import accumulate, inputs, pipeline, reduce, scaling, transform
from ._step.buffers import EngineSlot, UpdateBuffers
from ._step.context import Accumulation, Options, Setup, Step
from ._step.mode import FastMode, ProbeSource
from .aggregators.base import Aggregator
from .aggregators.sum import Sum
from .engines import Engine, make_engine
from .stats import BalanceStats
from .transforms.base import LossTransform
from .transforms.identity import Identity

Losses = inputs.Losses
Representation = inputs.Representation
LossScale = scaling.LossScale

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

    Each step runs the stages of :mod:`mtlbalance._step` (docs/architecture.md); the Balancer
    holds what lasts between steps: the parameters, the method, the engine, the buffers, the
    step count and the micro-batches of an accumulation.

    Args:
        shared: the shared parameters (a module, an iterable of parameters, or of
            ``(name, parameter)`` pairs). Parameters that do not require grad are ignored.
        task_params: task name -> that task's own parameters (same forms), optional.
        transform: a :class:`~mtlbalance.transforms.LossTransform` (default
            :class:`~mtlbalance.transforms.Identity`). By name: :func:`mtlbalance.make`.
        aggregator: an :class:`~mtlbalance.aggregators.Aggregator` (default
            :class:`~mtlbalance.aggregators.Sum`). By name: :func:`mtlbalance.make`.
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
        process_group: data-parallel balancing (docs/distributed.md): ``"world"`` (the default
            group) or a ``torch.distributed.ProcessGroup``. Each rank passes the losses of
            its equal shard of the global batch; the losses (before the transform) and what
            the method reads (exact gradient level: the (T, P) rows, T × EW's all-reduce; loss
            level: the one combined gradient, EW's; a fast mode: its probe rows or Gram at z
            and its one backward, EW's and a little) are averaged across the ranks, so every
            rank computes the global batch's update and state, and ``.grad`` is the global
            mean already: do not all-reduce it again (under ``DistributedDataParallel`` run
            the forward in ``no_sync()``). None (default): one process.
        mode: ``"exact"`` (Algorithm 1), or an approximation of a gradient-level method that
            costs about one backward: ``"probe"`` (factors from the rows of ``probe=``, by
            default the last shared layer every task reaches), ``"representation"`` (from the
            gradients at ``representation=z``) or ``"periodic"`` (an exact step every
            ``period=`` steps, default 4, its factors reused in between). The definitions:
            :mod:`mtlbalance._step.fast`, docs/mtlbalance.md "Fast modes (approximate)".
    """

    def __init__(
        self,
        shared: ParamSource,
        task_params: Mapping[str, ParamSource] | None = None,
        *,
        transform: LossTransform | None = None,
        aggregator: Aggregator | None = None,
        engine: str | Engine = "auto",
        tasks: Sequence[str] | None = None,
        max_update_norm: float | None = None,
        check_finite: bool = True,
        deterministic: bool = False,
        allow_unused: bool = False,
        chunk_size: int | None = None,
        retain_graph: bool = False,
        tables: ParamSource | None = None,
        process_group: reduce.ProcessGroupArg = None,
        mode: str = "exact",
        probe: ProbeSource = None,
        period: int | None = None,
    ):
        self.layout = FlatLayout(named_params(shared, "shared"))
        self._task_named: dict[str, list[tuple[str, Tensor]]] = {
            str(k): named_params(v, f"task_params[{k!r}]") for k, v in (task_params or {}).items()
        }
        shared_named = list(zip(self.layout.names, self.layout.params, strict=True))
        self._table_named: list[tuple[str, Tensor]] = (
            [] if tables is None else named_params(tables, "tables")
        )
        check_table_overlap(shared_named, self._table_named)
        check_disjoint(shared_named + self._table_named, self._task_named)
        self.transform: LossTransform = (
            Identity()
            if transform is None
            else _params.instance_of(
                transform, LossTransform, "transform", "mtlbalance.transforms.Log()"
            )
        )
        self.aggregator: Aggregator = (
            Sum()
            if aggregator is None
            else _params.instance_of(
                aggregator, Aggregator, "aggregator", "mtlbalance.aggregators.MaxNorm()"
            )
        )
        if max_update_norm is not None and not max_update_norm > 0:
            raise ValueError(f"max_update_norm must be > 0 or None, got {max_update_norm}")
        self._options = Options(check_finite, allow_unused, retain_graph, max_update_norm)
        self.engine_name = engine if isinstance(engine, str) else engine.name
        self._engine = EngineSlot(
            make_engine(engine, chunk_size=chunk_size, deterministic=deterministic)
        )
        self._buffers = UpdateBuffers(self.layout)
        self._collective = reduce.resolve(process_group)
        modes = (self.layout, self.aggregator, probe, period, engine, chunk_size, deterministic)
        self.mode = FastMode(mode, *modes)
        self.step = 0
        self._setup: Setup | None = None
        self._acc: Accumulation | None = None
        if tasks is not None:
            self._setup_tasks(tuple(str(t) for t in tasks))
        elif task_params is not None:
            self._setup_tasks(tuple(self._task_named))

    # ------------------------------------------------------------------ options
    @property
    def check_finite(self) -> bool:
        return self._options.check_finite

    @check_finite.setter
    def check_finite(self, value: bool) -> None:
        self._options.check_finite = bool(value)

    @property
    def allow_unused(self) -> bool:
        return self._options.allow_unused

    @allow_unused.setter
    def allow_unused(self, value: bool) -> None:
        self._options.allow_unused = bool(value)

    @property
    def retain_graph(self) -> bool:
        return self._options.retain_graph

    @retain_graph.setter
    def retain_graph(self, value: bool) -> None:
        self._options.retain_graph = bool(value)

    @property
    def max_update_norm(self) -> float | None:
        return self._options.max_update_norm

    @max_update_norm.setter
    def max_update_norm(self, value: float | None) -> None:
        if value is not None and not value > 0:
            raise ValueError(f"max_update_norm must be > 0 or None, got {value}")
        self._options.max_update_norm = value

    @property
    def engine(self) -> Engine:
        """The gradient engine in use (the loop engine after a fallback)."""
        return self._engine.engine

    @property
    def process_group(self) -> Any:
        """The ``process_group=`` given (None: one process, nothing is averaged)."""
        return None if self._collective is None else self._collective.given

    @property
    def communicated_bytes(self) -> int:
        """Data parallel: the payload (bytes) this rank put into collectives in its last
        step (0 with one process); a ring all-reduce sends about ``2 (W-1)/W`` times it."""
        return 0 if self._collective is None else self._collective.bytes_last_step

    # ------------------------------------------------------------------ tasks
    @property
    def task_names(self) -> tuple[str, ...]:
        if self._setup is None:
            raise RuntimeError(
                "the task names are not known yet: pass tasks=[...] (or task_params) to the "
                "Balancer, or call backward() once"
            )
        return self._setup.task_names

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
        self.transform.setup(names)
        self.aggregator.setup(names)
        self._setup = Setup(
            task_names=names,
            layout=self.layout,
            task_params=[[p for _, p in self._task_named.get(n, [])] for n in names],
            tables=self._table_named,
            transform=self.transform,
            aggregator=self.aggregator,
            engine=self._engine,
            buffers=self._buffers,
            options=self._options,
            collective=self._collective,
            mode=self.mode,
        )
        reduce.attach(self._setup)

    def _ready(self, losses: Losses) -> Setup:
        """The setup, the tasks named from the first losses if they were not given."""
        if self._setup is None:
            self._setup_tasks(inputs.default_names(losses))
        assert self._setup is not None
        return self._setup

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

    @property
    def needs_after_step(self) -> bool:
        """True when the method reads the losses after the optimizer step (FAMO): its transform
        or aggregator overrides ``after_step``. A training loop then recomputes the batch's
        losses at the new parameters and passes them to :meth:`after_step`."""
        return (
            type(self.transform).after_step is not LossTransform.after_step
            or type(self.aggregator).after_step is not Aggregator.after_step
        )

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
        setup = self._ready(losses)
        raw = inputs.task_losses(losses, setup.task_names)
        if self._acc is not None:
            raise RuntimeError(
                f"{self._acc.count} accumulated micro-batch(es) are pending: finish them with "
                f"backward_accumulated() (or give this one to accumulate() first)"
            )
        vec = reduce.losses(setup, torch.stack(raw))
        scale = scaling.parse(loss_scale, vec)
        scale_bad = None if scale is None else scaling.bad_flag(scale)
        zs = inputs.representation(representation)
        transformed, seed, transform_grads = transform.apply(
            setup.transform, vec, setup.transform_params()
        )
        step = Step(
            vec=vec,
            transformed=transformed,
            seed=seed,
            raw=raw,
            backward_seed=scaling.seeded(seed, scale),
            transform_grads=transform_grads,
            scale=scale,
            scale_bad=scale_bad,
            representation=zs,
        )
        return self._counted(pipeline.run(setup, step))

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
        setup = self._ready(losses)
        raw = inputs.task_losses(losses, setup.task_names)
        scale = scaling.parse(loss_scale, torch.stack(raw).detach())
        self._acc = accumulate.add(setup, self._acc, raw, scale, representation)

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
        assert self._setup is not None
        reduce.accumulation(self._setup, acc)
        vec = acc.loss_sum / acc.count
        transformed, seed, transform_grads = transform.apply(
            self._setup.transform, vec, self._setup.transform_params()
        )
        step = Step(
            vec=vec,
            transformed=transformed,
            seed=seed,
            transform_grads=transform_grads,
            scale_bad=acc.scale_bad,
            accumulated=acc,
        )
        return self._counted(pipeline.run(self._setup, step))

    def _counted(self, stats: BalanceStats) -> BalanceStats:
        if not stats.skipped:
            self.step += 1
        return stats

    # ------------------------------------------------------------------ hooks
    def epoch_end(self) -> None:
        """Call at the end of every epoch (DWA, STCH keep per-epoch loss history)."""
        self.transform.epoch_end()
        self.aggregator.epoch_end()

    def after_step(self, losses: Losses) -> None:
        """Call after ``optimizer.step()`` with the losses of the same batch recomputed at the
        new parameters, for methods that need them (FAMO; see :attr:`needs_after_step`). No
        gradients are taken."""
        vec = inputs.after_step_losses(losses, self.task_names)
        if self._setup is not None:
            vec = reduce.after_step_losses(self._setup, vec)
        self.transform.after_step(vec)
        self.aggregator.after_step(vec)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue a run bit for bit: step counts, moving averages,
        learnable parameters, loss history, the engine chosen."""
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "task_names": None if self._setup is None else list(self._setup.task_names),
            "step": self.step,
            "transform": self.transform.state_dict(),
            "aggregator": self.aggregator.state_dict(),
            "engine": self._engine.state(),
        }
        if self.mode.approximate:
            state["mode"] = self.mode.state()
        if self._table_named:  # (the tables keep no state; their shapes check a resume)
            state["tables"] = {n: list(p.shape) for n, p in self._table_named}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported balancer state version {state.get('version')!r}")
        names = state.get("task_names")
        if names is not None:
            names = tuple(names)
            if self._setup is None:
                self._setup_tasks(names)
            elif names != self._setup.task_names:
                raise ValueError(
                    f"the saved state is for tasks {list(names)}, this balancer has "
                    f"{list(self._setup.task_names)}"
                )
        _params.check_saved_tables(state.get("tables", {}), self._table_named)
        self.mode.load_state(state.get("mode"))
        self.transform.load_state_dict(state["transform"])
        self.aggregator.load_state_dict(state["aggregator"])
        self.step = int(state["step"])
        self._engine.load_state(state.get("engine", {}))

    def reset(self) -> None:
        """Start fresh: step counts, moving averages, loss history, learnable parameters. The
        engine the auto engine chose is kept (it describes the model, not the training)."""
        self.transform.reset()
        self.aggregator.reset()
        self.mode.reset()
        self.step = 0

    def __repr__(self) -> str:
        tasks = list(self._setup.task_names) if self._setup is not None else "?"
        return (
            f"Balancer(tasks={tasks}, transform={self.transform}, aggregator={self.aggregator}, "
            f"engine={self._engine.label!r}, shared={len(self.layout.params)} tensors / "
            f"{self.layout.total} values"
            + (
                f", tables={len(self._table_named)} tensors / "
                f"{sum(p.numel() for p in self.tables)} values (approximate)"
                if self._table_named
                else ""
            )
            + ")"
        )
