"""Sharded embedding tables (TorchRec ``DistributedModelParallel``) for the mtlrec models.

One training step on ``W`` ranks, each with its own equal shard of ``n`` rows of the global
batch (docs/distributed.md, "Sharded embeddings")::

    dmp = shard_model(model, sharding={"user": "table_wise"}, optimizer="exact_sgd", lr=0.05)
    balancer = mtlbalance.make(
        "dbmtl",
        model.dense_shared_parameters(),
        model.task_parameters(),
        tables=[model.table_frontier()],  # this rank's pooled rows: marked per_rank
        process_group="world",
    )
    z, preds = dmp(inputs)  # lookup: all-to-all
    opt.zero_grad()
    stats = balancer.backward(local_mean_losses)  # dense: what the method reads, averaged
    model.backward_tables()  # the ONE backward into the tables (skip_tables() if skipped)
    opt.step()  # dense (the tables stepped already)

The Balancer's reduce stage averages the losses and what the method reads across the ranks
(any engine, any mode), and gives the frontier — :func:`mtlbalance.per_rank`, THIS rank's
rows — its local gradient times 1/W, its share of the global batch's gradient; the tables'
backward then sums the shares (TorchRec's division by W switched off; the data-parallel
tables' DDP hook set to a sum).

- :func:`plan_sharding` asks TorchRec's ``EmbeddingShardingPlanner`` for a plan for the
  world size (the same plan on every rank: ``collective_plan``); ``sharding`` (table or
  feature -> sharding type) constrains it, ``plan`` replaces it.
- :func:`shard_model` wraps the model in ``DistributedModelParallel`` with a fused optimizer
  for the sharded tables, and does NOT wrap the dense layers in DDP
  (``init_data_parallel=False``): the balancer reduces the dense gradients itself, and DDP's
  reducer fires only on ``.backward()`` into ``.grad``.

The older alternative, kept working (tests/mtlrec/test_sharded.py) but not the way: a
one-process balancer (no ``process_group``) on globally averaged inputs —

- :func:`global_mean_losses` makes every rank's task losses the global batch means
  ``ℓ_t = Σ_r n_r ℓ_t^r / N`` (one all-reduce of T + 1 floats; unequal shards allowed), whose
  backward hands rank r its share ``n_r / N`` of the upstream gradient;
- :class:`DenseGradSync` sums the dense parameters' gradients across ranks inside every
  backward that reaches them (a tensor hook: also under ``torch.autograd.grad``), so the
  balancer sees the global per-task rows; it needs ``engine="loop"`` (a vmapped backward
  cannot run a collective per row) and runs one synchronous all-reduce per parameter per
  backward.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .models.base import MultiTaskRecModel
from .models.embeddings import _table_name

__all__ = [
    "FUSED_OPTIMIZERS",
    "SHARDING_TYPES",
    "CommCounter",
    "DenseGradSync",
    "full_tables",
    "global_mean_losses",
    "plan_sharding",
    "replicated_table_parameters",
    "shard_model",
]

SHARDING_TYPES = ("table_wise", "column_wise", "row_wise", "data_parallel", "table_row_wise")
"""The TorchRec sharding types :func:`plan_sharding` accepts by name. On CPU with gloo,
table_wise, column_wise and data_parallel work; the row-wise ones are refused on CPU (the
planner has no CPU kernel for them, and gloo lacks the reduce-scatter they need)."""

FUSED_OPTIMIZERS = ("exact_sgd", "exact_adagrad", "exact_row_wise_adagrad", "adam")
"""Fused optimizers by name (fbgemm ``EmbOptimType``): the table update runs in the backward."""


def _world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialised: call torch.distributed.init_process_group "
            "(gloo on CPU, nccl on GPU) in every process first, or launch with torchrun"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def _opt_type(name: str) -> Any:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    types = {
        "exact_sgd": EmbOptimType.EXACT_SGD,
        "exact_adagrad": EmbOptimType.EXACT_ADAGRAD,
        "exact_row_wise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        "adam": EmbOptimType.ADAM,
    }
    if name not in types:
        raise ValueError(f"optimizer {name!r} is not a fused optimizer; use one of {list(types)}")
    return types[name]


def _table_of(model: MultiTaskRecModel, key: str) -> str:
    """A ``sharding`` key (a feature or its table name ``t_<feature>``) -> the table name."""
    features = model.embedding.features
    if key in features:
        return _table_name(key)
    if key.startswith("t_") and key[2:] in features:
        return key
    raise ValueError(
        f"sharding names {key!r}, which is no table of this model; its features are "
        f"{list(features)} (tables t_<feature>)"
    )


def _sharder(fused: Mapping[str, Any]) -> Any:
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    return EmbeddingBagCollectionSharder(fused_params=dict(fused))


def _fused_params(optimizer: str, lr: float, optimizer_args: Mapping[str, Any] | None) -> dict:
    if not (isinstance(lr, int | float) and lr > 0):
        raise ValueError(f"lr must be a positive number, not {lr!r}")
    return {"optimizer": _opt_type(optimizer), "learning_rate": float(lr), **(optimizer_args or {})}


def plan_sharding(
    model: MultiTaskRecModel,
    *,
    sharding: Mapping[str, str] | None = None,
    group: dist.ProcessGroup | None = None,
    compute_device: str = "cpu",
    optimizer: str = "exact_sgd",
    lr: float = 0.01,
    optimizer_args: Mapping[str, Any] | None = None,
) -> Any:
    """TorchRec's ``EmbeddingShardingPlanner`` plan for ``model``'s tables on the ranks of
    ``group`` (the default group: the world), the same on every rank (``collective_plan``).

    ``sharding``: table or feature name -> one of :data:`SHARDING_TYPES` (that table may only
    be sharded so); tables it does not name are left to the planner (``compute_device``:
    ``"cpu"`` or ``"cuda"``). Call it in every rank (it is a collective)."""
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints

    _, world = _world(group)
    if model.embedding.ebc is None:
        raise ValueError(
            "the model's embeddings use the plain-torch backend, which TorchRec cannot shard; "
            "build it with backend='torchrec'"
        )
    odd = {f: d for f, (_, d) in model.embedding.features.items() if d % 4}
    if odd:
        raise ValueError(
            f"embedding dims {odd} (feature: dim) are not multiples of 4, which TorchRec's "
            f"sharded kernels (fbgemm) need; give those features a dim divisible by 4"
        )
    constraints: dict[str, ParameterConstraints] = {}
    for key, kind in (sharding or {}).items():
        table = _table_of(model, key)
        if kind not in SHARDING_TYPES:
            raise ValueError(
                f"sharding[{key!r}] = {kind!r} is not a sharding type; use one of "
                f"{list(SHARDING_TYPES)}"
            )
        if compute_device == "cpu" and kind in ("row_wise", "table_row_wise"):
            raise ValueError(
                f"sharding[{key!r}] = {kind!r}: TorchRec's planner offers no {kind} kernel on "
                f"CPU (and gloo lacks the reduce-scatter it needs); on CPU use table_wise, "
                f"column_wise or data_parallel, or run on GPUs with nccl"
            )
        kernel = "dense" if kind == "data_parallel" else "fused"
        constraints[table] = ParameterConstraints(sharding_types=[kind], compute_kernels=[kernel])
    topology = Topology(world_size=world, compute_device=compute_device)
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    sharder = _sharder(_fused_params(optimizer, lr, optimizer_args))
    pg = group if group is not None else dist.GroupMember.WORLD
    return planner.collective_plan(model, [sharder], pg)


def shard_model(
    model: MultiTaskRecModel,
    *,
    sharding: Mapping[str, str] | None = None,
    plan: Any = None,
    group: dist.ProcessGroup | None = None,
    device: torch.device | str | None = None,
    optimizer: str = "exact_sgd",
    lr: float = 0.01,
    optimizer_args: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Wrap ``model`` in TorchRec's ``DistributedModelParallel``: its tables sharded by
    ``plan`` (default: :func:`plan_sharding` with ``sharding``) with the fused ``optimizer``
    (``lr`` and ``optimizer_args`` such as ``eps``), its dense layers left as they are
    (replicated, NOT wrapped in DDP: a ``Balancer(..., process_group="world")`` reduces
    their gradients; the older alternative: :class:`DenseGradSync`).

    ``model`` itself is changed in place (``model.embedding.ebc`` becomes the sharded module)
    and stays usable: ``model.dense_shared_parameters()``, ``task_parameters()``,
    ``table_frontier()`` and ``backward_tables()`` are what a training step needs. Tables
    built on the meta device (:func:`mtlrec.models.meta_tables`) are allocated and drawn per
    shard; otherwise the model's current values are copied into the shards. The split
    backward (:meth:`~mtlrec.models.MultiTaskRecModel.table_frontier`) is switched on: with
    a fused optimizer the tables must get exactly one backward per step.

    Returns the ``DistributedModelParallel`` (call it as the model: ``dmp(inputs)``; its
    ``fused_optimizer`` holds the tables' optimizer state; checkpoint and resume the run with
    :mod:`mtlrec.sharded_checkpoint`)."""
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.types import ShardingEnv

    _world(group)
    if plan is not None and sharding is not None:
        raise ValueError("give either sharding= (constraints for the planner) or plan=, not both")
    fused = _fused_params(optimizer, lr, optimizer_args)
    if plan is None:
        plan = plan_sharding(
            model,
            sharding=sharding,
            group=group,
            compute_device=torch.device(device or "cpu").type,
            optimizer=optimizer,
            lr=lr,
            optimizer_args=optimizer_args,
        )
    pg = group if group is not None else dist.GroupMember.WORLD
    dev = torch.device(device or "cpu")
    initial = None
    ebc = model.embedding.ebc
    if ebc is None:
        raise ValueError(
            "the model's embeddings use the plain-torch backend, which TorchRec cannot shard; "
            "build it with backend='torchrec'"
        )
    if not model.embedding.on_meta:
        initial = {n: w.detach().clone() for n, w in ebc.state_dict().items()}
    model.table_frontier()
    dmp = DistributedModelParallel(
        model,
        env=ShardingEnv.from_process_group(pg),
        device=dev,
        plan=plan,
        sharders=[_sharder(fused)],
        init_data_parallel=False,
    )
    if initial is not None:
        _copy_into_shards(model, initial)
    for ddp in _replicated_lookups(model):
        ddp.register_comm_hook(None, _sum_hook)
    return dmp


def _replicated_lookups(model: MultiTaskRecModel) -> list[Any]:
    from torch.nn.parallel import DistributedDataParallel

    ebc = model.embedding.ebc
    # TorchRec (1.9) keeps its lookups, the data-parallel ones wrapped in DDP, in a plain list
    lookups = getattr(ebc, "_lookups", None) if ebc is not None else None
    if not lookups:
        return []
    return [m for m in lookups if isinstance(m, DistributedDataParallel)]


def _sum_hook(state: Any, bucket: Any) -> Any:
    """DDP comm hook: SUM the bucket across ranks (DDP's default averages). Each rank's
    gradient is already its share of the global batch's gradient (the frontier's gradient:
    the Balancer's per-rank local gradient × 1/W, or through :func:`global_mean_losses`), so
    the shares add up."""
    tensor = bucket.buffer()
    work = dist.all_reduce(tensor, async_op=True)
    assert work is not None
    return work.get_future().then(lambda f: f.value()[0])


# DDP checks the hook's annotations as objects (this module's are strings)
_sum_hook.__annotations__ = {
    "state": object,
    "bucket": dist.GradBucket,
    "return": torch.futures.Future[torch.Tensor],
}


def replicated_table_parameters(model: MultiTaskRecModel) -> list[Tensor]:
    """The parameters of the data-parallel (replicated) tables after :func:`shard_model`:
    TorchRec gives them no fused optimizer — put them in the dense optimizer. Their
    gradients are summed across ranks in the tables' one backward (a DDP inside TorchRec's
    lookup, whose comm hook :func:`shard_model` sets to a sum); do not add them to the
    balancer or to :class:`DenseGradSync`."""
    return [p for ddp in _replicated_lookups(model) for p in ddp.parameters() if p.requires_grad]


@torch.no_grad()
def _copy_into_shards(model: MultiTaskRecModel, full: Mapping[str, Tensor]) -> None:
    """Write the unsharded values ``full`` (ebc state-dict key -> tensor) into this rank's
    shards (ShardedTensor local shards at their offsets; replicated tables whole)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    ebc = model.embedding.ebc
    assert ebc is not None
    state = ebc.state_dict()
    for key, target in state.items():
        if key not in full:
            continue
        source = full[key]
        if isinstance(target, ShardedTensor):
            for shard in target.local_shards():
                rows, cols = shard.metadata.shard_offsets
                n, d = shard.metadata.shard_sizes
                shard.tensor.copy_(source[rows : rows + n, cols : cols + d])
        else:
            target.copy_(source)


@torch.no_grad()
def full_tables(model: MultiTaskRecModel, group: dist.ProcessGroup | None = None) -> dict:
    """feature -> its whole ``(num_embeddings, dim)`` table on every rank (a collective: the
    shards are summed into zeros by one all-reduce per table). For tests and small tables,
    not for production sizes (checkpoints: :mod:`mtlrec.sharded_checkpoint`, each rank's own
    shards)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    _world(group)
    ebc = model.embedding.ebc
    assert ebc is not None
    state = ebc.state_dict()
    out: dict[str, Tensor] = {}
    for feature, (num, dim) in model.embedding.features.items():
        key = f"embedding_bags.{_table_name(feature)}.weight"
        target = state[key]
        if isinstance(target, ShardedTensor):
            whole = torch.zeros(num, dim)
            for shard in target.local_shards():
                rows, cols = shard.metadata.shard_offsets
                n, d = shard.metadata.shard_sizes
                whole[rows : rows + n, cols : cols + d] = shard.tensor.float()
            dist.all_reduce(whole, group=group)
        else:
            whole = target.detach().float().clone()
        out[feature] = whole
    return out


# ---------------------------------------------------------------------- dense reduction
@dataclass
class CommCounter:
    """Bytes this rank handed to the collectives it ran, by kind (``all_reduce`` ...)."""

    bytes: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, tensor: Tensor) -> None:
        self.bytes[kind] = self.bytes.get(kind, 0) + tensor.numel() * tensor.element_size()
        self.calls[kind] = self.calls.get(kind, 0) + 1

    def total(self) -> int:
        return sum(self.bytes.values())

    def reset(self) -> None:
        self.bytes.clear()
        self.calls.clear()


class _GlobalMean(torch.autograd.Function):
    """``ℓ = Σ_r n_r ℓ^r / N`` on every rank; backward: rank r's share ``g n_r / N``."""

    @staticmethod
    def forward(ctx: Any, local: Tensor, count: float, group: Any, counter: Any) -> Tensor:
        # a rank without rows sends zeros (its mean loss, NaN, must not reach the others)
        mine = local.detach() * count if count else torch.zeros_like(local)
        packed = torch.cat([mine, local.new_full((1,), float(count))])
        if counter is not None:
            counter.add("all_reduce", packed)
        dist.all_reduce(packed, group=group)
        total = packed[-1]
        ctx.share = float(count) / float(total)
        return packed[:-1] / total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        return grad * ctx.share, None, None, None


def global_mean_losses(
    losses: Mapping[str, Tensor],
    count: int,
    *,
    group: dist.ProcessGroup | None = None,
    counter: CommCounter | None = None,
) -> dict[str, Tensor]:
    """The global batch means of the task losses, on every rank, from this rank's means over
    its ``count`` rows: ``ℓ_t = Σ_r n_r ℓ_t^r / Σ_r n_r`` (one all-reduce of T + 1 floats).

    Differentiable: every rank backpropagates the same upstream gradient ``g`` (the balancer
    runs the same computation on every rank), so rank r's local graph receives its share
    ``g n_r / N`` — the part of ``∂ℓ_t/∂θ`` that its rows contribute. Summing those parts
    across ranks (:class:`DenseGradSync`; the sharded tables' all-to-all backward does it for
    the tables) gives the gradient of the global batch loss."""
    _world(group)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError(f"count must be this rank's number of rows (an int >= 0), not {count!r}")
    names = list(losses)
    for t in names:
        value = losses[t]
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError(f"loss of task {t!r} must be a scalar tensor, got {value!r}")
    local = torch.stack([losses[t].reshape(()) for t in names])
    out = _GlobalMean.apply(local, count, group, counter)
    return {t: out[i] for i, t in enumerate(names)}


class DenseGradSync:
    """Sum the gradients of replicated parameters across ranks whenever autograd computes
    them — ``.backward()`` and ``torch.autograd.grad`` alike (a tensor hook per parameter) —
    so that each rank's share of the gradient of the global loss (:func:`global_mean_losses`)
    becomes the whole gradient on every rank before the balancer reads it.

    With the balancer's loop engine each per-task backward is reduced: the rows it balances
    are the global rows (exact data parallelism for any method), at T × the traffic of EW's
    one reduction. Every rank must run the same backwards in the same order (it does: the
    same balancer on the same graph). ``close()`` removes the hooks.

    The older alternative to the Balancer's own reduce stage (``Balancer(...,
    process_group="world")`` with ``tables=[model.table_frontier()]``, which reduces after
    the backwards, on any engine): kept working, not the way."""

    def __init__(
        self,
        params: Iterable[Tensor] | Sequence[Tensor],
        *,
        group: dist.ProcessGroup | None = None,
        counter: CommCounter | None = None,
    ) -> None:
        _, self.world = _world(group)
        self.group = group
        self.counter = counter
        self.params = [p for p in params if p.requires_grad]
        seen: set[int] = set()
        for p in self.params:
            if id(p) in seen:
                raise ValueError("DenseGradSync: a parameter is listed twice")
            seen.add(id(p))
        self._handles = [p.register_hook(self._reduce) for p in self.params]

    def _reduce(self, grad: Tensor) -> Tensor:
        out = grad.clone()  # (the hook must not write into a tensor autograd still holds)
        if self.counter is not None:
            self.counter.add("all_reduce", out)
        dist.all_reduce(out, group=self.group)
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
