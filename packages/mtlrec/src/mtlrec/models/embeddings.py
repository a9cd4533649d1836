"""Sparse embeddings over TorchRec or plain ``torch.nn.EmbeddingBag`` — the same model code
over both.

``SparseEmbeddings(features)`` holds one table per feature (feature -> ``(num_embeddings,
dim)``), sum-pools each feature's ids per row and concatenates the pooled vectors in the
order of ``features`` (insertion order): the output is ``(N, Σ dim)``.

- ``backend="torchrec"``: an unsharded ``torchrec.EmbeddingBagCollection`` fed one
  ``KeyedJaggedTensor`` per batch (the module TorchRec's planner shards later).
- ``backend="torch"``: one ``torch.nn.EmbeddingBag(mode="sum")`` per feature.
- ``backend="auto"`` (default): TorchRec when it imports, plain torch otherwise.

Sharded tables (TorchRec ``DistributedModelParallel``, :mod:`mtlrec.distributed`): the
``torchrec`` backend's ``ebc`` is what DMP shards; build it on the meta device inside
:func:`meta_tables` for tables too large for one process (DMP then materialises only each
rank's shards, drawn from the same ``N(0, init_std²)``). With a fused optimizer the table
update happens *inside* the backward through the lookup, so the tables must get exactly ONE
backward per step: :meth:`SparseEmbeddings.table_frontier` and
:meth:`SparseEmbeddings.backward_tables` split the backward there (docs/distributed.md,
"Sharded embeddings").

Both backends initialise the tables the same way (``N(0, init_std²)``, drawn in feature order
from the global torch RNG, nothing else drawn), so the same seed gives the same weights on
either; :meth:`SparseEmbeddings.copy_weights_from` and :meth:`SparseEmbeddings.to_backend`
move weights between them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .inputs import RecInputs, as_bag, check_inputs

__all__ = [
    "BACKENDS",
    "EmbeddingConfig",
    "SparseEmbeddings",
    "meta_tables",
    "torchrec_available",
]

EmbeddingConfig = Mapping[str, tuple[int, int]]
"""feature name -> ``(num_embeddings, embedding_dim)``"""

BACKENDS = ("auto", "torchrec", "torch")


@functools.cache
def torchrec_available() -> bool:
    """True when ``torchrec`` (and its fbgemm kernels) import."""
    try:
        import torchrec  # noqa: F401
    except Exception:  # ImportError, or a broken fbgemm install raising OSError/RuntimeError
        return False
    return True


def _table_name(feature: str) -> str:
    return f"t_{feature}"


_META_TABLES = False


@contextlib.contextmanager
def meta_tables() -> Iterator[None]:
    """Inside this block, ``backend="torchrec"`` embeddings build their tables on the meta
    device (no memory, no initial values): for a model that
    :func:`mtlrec.distributed.shard_model` wraps in ``DistributedModelParallel``, which then
    allocates and initialises only each rank's shards (``N(0, init_std²)``, TorchRec's RNG
    stream — not the same values as an unsharded build from the same seed). The plain-torch
    backend cannot shard and raises here."""
    global _META_TABLES
    before, _META_TABLES = _META_TABLES, True
    try:
        yield
    finally:
        _META_TABLES = before


@contextlib.contextmanager
def _no_gradient_division(sharded: bool) -> Iterator[None]:
    """TorchRec's sharded all-to-all divides the gradients by the world size in its backward
    by default (the DDP convention: each rank's loss is a local mean that DDP averages). The
    frontier's gradient is already this rank's share of the global batch's gradient (the
    Balancer's ``process_group=`` scales a :func:`mtlbalance.per_rank` table's gradient by
    1/W; the older :func:`mtlrec.distributed.global_mean_losses` hands each rank its share),
    so the tables' one backward runs with the division off: the shares add up."""
    if not sharded:
        yield
        return
    from torchrec.distributed import comm_ops

    before = comm_ops.get_gradient_division()
    comm_ops.set_gradient_division(False)
    try:
        yield
    finally:
        comm_ops.set_gradient_division(before)


def _refill(leaf: Tensor, data: Tensor) -> None:
    """``leaf.data = data``. When the shape changes (every refill of the table frontier: an
    empty leaf between steps, a batch of any size in a step), the leaf's gradient
    accumulator is dropped first: one kept alive by a graph of an earlier step that the
    caller still holds expects the old shape, and the next backward through the leaf would
    fail ("CatBackward0 returned an invalid gradient"). Setting ``.data`` of another dtype
    drops it (autograd's ``set_data`` resets the accumulator on a type change; a size change
    alone does not), so the next backward makes one of the new shape."""
    if leaf.shape != data.shape:
        other = torch.float64 if data.dtype != torch.float64 else torch.float32
        leaf.data = torch.empty(0, dtype=other)
    leaf.data = data


class SparseEmbeddings(nn.Module):
    """Sum-pooled embedding tables, one per feature; ``forward(RecInputs) -> (N, Σ dim)``.

    Args:
        features: feature -> ``(num_embeddings, dim)``; the output concatenates the features in
            this order. A feature is read from ``inputs.sparse`` (one id a row) or
            ``inputs.multi_hot`` (a :class:`~mtlrec.data.Jagged` bag of ids a row), whichever
            has it.
        backend: ``"auto"``, ``"torchrec"`` or ``"torch"`` (see the module docstring).
        init_std: the tables start as ``N(0, init_std²)``.
        check_ids: check every id is in ``[0, num_embeddings)`` and name the feature when not
            (one host sync per batch; turn off for throughput once the data is trusted — an
            out-of-range id on a GPU is otherwise a device-side assert).
    """

    def __init__(
        self,
        features: EmbeddingConfig,
        backend: str = "auto",
        *,
        init_std: float = 0.05,
        check_ids: bool = True,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        if not (isinstance(init_std, int | float) and init_std > 0):
            raise ValueError(f"init_std must be a positive number, not {init_std!r}")
        self.features: dict[str, tuple[int, int]] = {}
        for name, spec in features.items():
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(
                    f"feature name {name!r} is not usable: it must be a non-empty str without '.'"
                )
            if not (
                isinstance(spec, tuple | list)
                and len(spec) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in spec)
                and spec[0] > 0
                and spec[1] > 0
            ):
                raise ValueError(
                    f"feature {name!r}: expected (num_embeddings, dim) as two positive ints, got "
                    f"{spec!r} (num_embeddings comes from the fitted spec's cardinalities)"
                )
            self.features[name] = (int(spec[0]), int(spec[1]))
        if backend == "auto":
            backend = "torchrec" if torchrec_available() else "torch"
        elif backend == "torchrec" and not torchrec_available():
            raise ImportError(
                "backend='torchrec' needs torchrec (with fbgemm-gpu-cpu or fbgemm-gpu); install it "
                "or use backend='torch' (plain torch.nn.EmbeddingBag, same results)"
            )
        self.backend = backend
        self.init_std = float(init_std)
        self.check_ids = check_ids
        self.output_dim = sum(d for _, d in self.features.values())
        self.on_meta = _META_TABLES
        if self.on_meta and backend != "torchrec":
            raise ValueError(
                "meta_tables() builds TorchRec tables for DistributedModelParallel; "
                f"backend={backend!r} cannot be sharded (use backend='torchrec')"
            )
        # the split backward (table_frontier / backward_tables): the leaf the balancer sees
        # in place of the tables, and the lookup output waiting for its one backward
        self._frontier: Tensor | None = None
        self._pending: Tensor | None = None
        # Build without touching the global RNG, then draw the initial weights in feature
        # order: the same seed gives the same tables on both backends.
        with torch.random.fork_rng(devices=[]):
            if backend == "torchrec":
                self.ebc: nn.Module | None = self._make_ebc()
                self.bags: nn.ModuleDict | None = None
            else:
                self.ebc = None
                self.bags = nn.ModuleDict(
                    {f: nn.EmbeddingBag(n, d, mode="sum") for f, (n, d) in self.features.items()}
                )
        if not self.on_meta:
            self.reset_parameters()

    def _make_ebc(self) -> nn.Module:
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

        init = functools.partial(torch.nn.init.normal_, mean=0.0, std=self.init_std)
        configs = [
            EmbeddingBagConfig(
                name=_table_name(f),
                embedding_dim=d,
                num_embeddings=n,
                feature_names=[f],
                pooling=PoolingType.SUM,
                init_fn=init,  # what DMP draws a meta-built table's shards from
            )
            for f, (n, d) in self.features.items()
        ]
        device = torch.device("meta" if self.on_meta else "cpu")
        return EmbeddingBagCollection(tables=configs, device=device)

    @property
    def sharded(self) -> bool:
        """True once ``DistributedModelParallel`` has replaced ``ebc`` by its sharded
        variant (:func:`mtlrec.distributed.shard_model`)."""
        return self.ebc is not None and type(self.ebc).__name__.startswith("Sharded")

    # ------------------------------------------------------------------ split backward
    def table_frontier(self) -> Tensor:
        """Split the backward at the lookup output and return the leaf that stands in for the
        tables: give it to the balancer as ``Balancer(tables=[emb.table_frontier()])``, and
        call :meth:`backward_tables` after ``balancer.backward(...)`` on every step.

        The contract (needed by TorchRec's fused optimizers, where the table update runs
        *inside* the backward through the lookup, and by sharded tables, whose backward is an
        all-to-all every rank must join once): the forward hands the dense layers the pooled
        embeddings ``E`` as a detached leaf ``Ê`` (this tensor, refilled each forward); the
        balancer's per-task backwards stop at ``Ê`` (they never reach the lookup); its tables
        stage gives ``Ê.grad = ∂(Σ_t c_t ℓ̃_t)/∂E`` — ``c_t`` the method's weights, the
        transformed losses ``ℓ̃_t`` (for loss-level methods, EW included, the one combined
        backward: exact); :meth:`backward_tables` then runs ``E.backward(Ê.grad)``, the ONE
        backward through the lookup, so each table receives ``∂(Σ_t c_t ℓ̃_t)/∂W`` =
        ``J_lookupᵀ Ê.grad`` exactly once (the fused optimizer steps once).

        Unsharded and sharded tables alike (the same results as ``Balancer(tables=model
        .embedding_parameters())`` on an unsharded model: the chain rule through the
        lookup). Between steps ``Ê`` is empty, ``(0, Σ dim)``, so a balancer's
        ``state_dict`` does not depend on the batch size.

        ``Ê`` is marked :func:`mtlbalance.per_rank`: it holds THIS RANK'S pooled rows, not a
        replicated parameter, so a data-parallel balancer (``process_group="world"``) gives
        it the local gradient times ``1/W`` (``∂ℓ/∂Ê_r = (1/W) ∂ℓ^r/∂Ê_r`` for the global
        loss ``ℓ = (1/W) Σ_r ℓ^r``) instead of averaging it across ranks; the tables'
        backward then sums the ranks' shares. With one process the mark changes nothing.
        """
        if self._frontier is None:
            import mtlbalance

            self._frontier = mtlbalance.per_rank(
                torch.zeros(0, self.output_dim, requires_grad=True)
            )
        return self._frontier

    def backward_tables(self) -> None:
        """The ONE backward through the lookup: ``E.backward(Ê.grad)`` (see
        :meth:`table_frontier`); with a fused optimizer this is where the tables change. Then
        ``Ê`` is emptied for the next forward."""
        if self._frontier is None:
            raise RuntimeError(
                "backward_tables() needs the split backward: call table_frontier() first and "
                "give it to the balancer as tables=[...]"
            )
        if self._pending is None:
            raise RuntimeError(
                "backward_tables(): no lookup is waiting for its backward (no training forward "
                "since the last call, or it was already called for this batch — the tables "
                "must get exactly one backward per step)"
            )
        grad = self._frontier.grad
        if grad is None:
            raise RuntimeError(
                "backward_tables(): the table frontier has no gradient: give "
                "table_frontier() to the balancer as tables=[...] and call balancer.backward "
                "before backward_tables() (for a step the balancer skipped, stats.skipped, "
                "call skip_tables() instead)"
            )
        if grad.shape != self._pending.shape:
            raise RuntimeError(
                f"backward_tables(): the frontier's gradient has shape {tuple(grad.shape)}, "
                f"the lookup output {tuple(self._pending.shape)}; was there a second forward "
                f"before the backward?"
            )
        pending, self._pending = self._pending, None
        with _no_gradient_division(self.sharded):
            pending.backward(grad.to(pending.dtype))
        self._reset_frontier()

    def skip_tables(self) -> None:
        """Drop the lookup waiting for its backward WITHOUT running it, for a step the
        balancer skipped (``stats.skipped``: a loss-scale overflow; under a process group
        every rank skips together) and so gave the frontier no gradient: the tables do not
        change (a fused optimizer does not step), and the next forward may run."""
        if self._frontier is None or self._pending is None:
            raise RuntimeError(
                "skip_tables(): no lookup is waiting for its backward (call it instead of "
                "backward_tables() after a skipped balancer step)"
            )
        self._pending = None
        self._reset_frontier()

    def _reset_frontier(self) -> None:
        frontier = self._frontier
        assert frontier is not None
        frontier.grad = None
        _refill(frontier, torch.zeros(0, self.output_dim, dtype=frontier.dtype))

    def _split(self, pooled: Tensor) -> Tensor:
        """Forward of the split backward: keep ``pooled`` for :meth:`backward_tables`, hand
        out the leaf ``Ê`` holding its values."""
        if self._frontier is None or not pooled.requires_grad:
            return pooled  # no split, or an evaluation forward (no_grad): nothing waits
        if self._pending is not None:
            raise RuntimeError(
                "the previous training batch's tables never got their backward: call "
                "model.backward_tables() (SparseEmbeddings.backward_tables) after every "
                "balancer.backward(...), before the next forward (with a fused optimizer the "
                "table update happens in that backward); use torch.no_grad() for evaluation"
            )
        self._pending = pooled
        frontier = self._frontier
        frontier.grad = None
        _refill(frontier, pooled.detach())
        return frontier

    # ------------------------------------------------------------------ weights
    def tables(self) -> dict[str, nn.Parameter]:
        """feature -> its ``(num_embeddings, dim)`` weight, in feature order."""
        if self.ebc is not None:
            bags: Any = self.ebc.embedding_bags
            return {f: bags[_table_name(f)].weight for f in self.features}
        assert self.bags is not None
        plain: Any = self.bags
        return {f: plain[f].weight for f in self.features}

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw every table from ``N(0, init_std²)`` in feature order (global torch RNG)."""
        for weight in self.tables().values():
            weight.normal_(0.0, self.init_std)

    @torch.no_grad()
    def copy_weights_from(self, other: SparseEmbeddings) -> None:
        """Copy ``other``'s tables into this module (either backend to either)."""
        if not isinstance(other, SparseEmbeddings):
            raise TypeError(f"expected SparseEmbeddings, got {type(other).__name__}")
        if dict(other.features) != self.features:
            raise ValueError(
                f"the feature configs differ: this module has {self.features}, the other "
                f"{dict(other.features)}"
            )
        mine, theirs = self.tables(), other.tables()
        for f in self.features:
            mine[f].copy_(theirs[f])

    def to_backend(self, backend: str) -> SparseEmbeddings:
        """A new module on ``backend`` with a copy of these weights (same device and dtype)."""
        with torch.random.fork_rng(devices=[]):
            other = SparseEmbeddings(
                self.features, backend, init_std=self.init_std, check_ids=self.check_ids
            )
        first = next(iter(self.tables().values()), None)
        if first is not None:
            other = other.to(device=first.device, dtype=first.dtype)
        other.copy_weights_from(self)
        return other

    # ------------------------------------------------------------------ forward
    def _bags(self, inputs: RecInputs) -> dict[str, tuple[Tensor, Tensor]]:
        """feature -> (values, offsets of length N + 1), int64, ids checked."""
        n = inputs.batch_size
        out: dict[str, tuple[Tensor, Tensor]] = {}
        for f, (num, _) in self.features.items():
            if f in inputs.sparse:
                ids = inputs.sparse[f]
                if ids.dim() != 1 or ids.shape[0] != n:
                    raise ValueError(
                        f"sparse feature {f!r}: expected shape ({n},), got {tuple(ids.shape)}"
                    )
                values = ids.long()
                offsets = torch.arange(n + 1, device=ids.device)
            elif f in inputs.multi_hot:
                values, offsets = as_bag(inputs.multi_hot[f], f)
                if offsets.dim() != 1 or offsets.shape[0] != n + 1:
                    raise ValueError(
                        f"multi-hot feature {f!r}: offsets must have N + 1 = {n + 1} entries "
                        f"(CSR), got shape {tuple(offsets.shape)}"
                    )
                values, offsets = values.long(), offsets.long()
            else:
                raise ValueError(
                    f"the inputs have no feature {f!r} (sparse: {sorted(inputs.sparse)}, "
                    f"multi_hot: {sorted(inputs.multi_hot)}); the embedding config names "
                    f"{list(self.features)}"
                )
            if self.check_ids and values.numel():
                lo, hi = torch.aminmax(values)
                lo_i, hi_i = int(lo), int(hi)
                if lo_i < 0 or hi_i >= num:
                    bad = lo_i if lo_i < 0 else hi_i
                    raise ValueError(
                        f"feature {f!r}: id {bad} is outside its table [0, {num}); size the table "
                        f"from the fitted spec's cardinalities (or map unseen values to the "
                        f"reserved id)"
                    )
            out[f] = (values, offsets)
        return out

    def forward(self, inputs: RecInputs) -> Tensor:
        """Pooled embeddings ``(N, Σ dim)``, features concatenated in config order (with
        :meth:`table_frontier`: the leaf ``Ê`` holding them, during training)."""
        check_inputs(inputs, "SparseEmbeddings")
        if not self.features:
            return torch.zeros(inputs.batch_size, 0, device=inputs.device)
        return self._split(self._lookup(inputs))

    def _lookup(self, inputs: RecInputs) -> Tensor:
        bags = self._bags(inputs)
        if self.ebc is None:
            assert self.bags is not None
            return torch.cat([self.bags[f](v, o[:-1]) for f, (v, o) in bags.items()], dim=1)
        from torchrec import KeyedJaggedTensor

        keys = list(bags)
        values = torch.cat([v for v, _ in bags.values()])
        lengths = torch.cat([o[1:] - o[:-1] for _, o in bags.values()]).to(torch.int64)
        kjt = KeyedJaggedTensor(keys=keys, values=values, lengths=lengths)
        pooled: Any = self.ebc(kjt)
        per_key = pooled.to_dict()
        return torch.cat([per_key[f] for f in keys], dim=1)

    def extra_repr(self) -> str:
        return (
            f"backend={self.backend!r}, features={len(self.features)}, output_dim={self.output_dim}"
        )
