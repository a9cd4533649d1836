"""The collectives of data-parallel balancing: averaging per-task quantities across the ranks
of a process group, bucketed (see :mod:`.reduce`, which decides what is averaged when)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

Grads = list[Tensor | None]

ProcessGroupArg = Any  # torch.distributed.ProcessGroup | Literal["world"] | None

DEFAULT_BUCKET_BYTES = 25 * 1024 * 1024  # DDP's default bucket_cap_mb
INPLACE_BYTES = 1024 * 1024  # a tensor this large is reduced in place; smaller ones packed


class Collective:
    """The process group a balancer's per-task quantities are averaged over, and the
    collectives it issues (bucketed, in place where the buffer is owned).

    ``group``: a ``torch.distributed.ProcessGroup``, or ``"world"`` for the default group
    (resolved at each step, so the balancer may be built before ``init_process_group``).
    ``bytes_last_step``: the payload this rank put into collectives in its last step (what a
    ring all-reduce sends is about ``2 (W-1)/W`` times that).
    """

    def __init__(
        self,
        group: Any,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        inplace_bytes: int = INPLACE_BYTES,
    ):
        if group is None:
            raise ValueError("Collective needs a process group (or 'world')")
        if isinstance(group, str) and group != "world":
            raise ValueError(
                f"process_group={group!r}: pass a torch.distributed.ProcessGroup, or 'world' "
                f"for the default group"
            )
        if bucket_bytes <= 0:
            raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
        self._group = group
        self.bucket_bytes = int(bucket_bytes)
        self.inplace_bytes = int(inplace_bytes)
        self.bytes_last_step = 0

    # ------------------------------------------------------------------ group
    @property
    def given(self) -> Any:
        """The group as given (``"world"`` or a ProcessGroup)."""
        return self._group

    @property
    def group(self) -> Any:
        """The process group (None: the default group of an initialised job)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "the Balancer was given a process_group but torch.distributed is not "
                "initialised: call torch.distributed.init_process_group(...) first (or launch "
                "with torchrun / mtlbench run --nproc N)"
            )
        return None if isinstance(self._group, str) else self._group

    @property
    def world_size(self) -> int:
        import torch.distributed as dist

        return int(dist.get_world_size(self.group))

    def _count(self, tensors: Sequence[Tensor]) -> None:
        self.bytes_last_step += sum(t.numel() * t.element_size() for t in tensors)

    # ------------------------------------------------------------------ collectives
    def mean_(self, tensors: Sequence[Tensor]) -> None:
        """Average contiguous dense tensors across the group, in place, in buckets of at most
        ``bucket_bytes``: a tensor of ``INPLACE_BYTES`` or more (the rows) is reduced where it
        is, in bucket-sized slices of its flat view; smaller ones are packed into buckets."""
        present = self.all_reduce_(tensors)
        world = self.world_size
        for t in present:
            t.div_(world)

    def all_reduce_(self, tensors: Sequence[Tensor], op: str = "sum") -> list[Tensor]:
        """All-reduce contiguous dense tensors in place (``op``: ``"sum"`` or ``"max"``),
        bucketed as :meth:`mean_`; returns the non-empty ones."""
        import torch.distributed as dist

        group = self.group
        reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        present = [t for t in tensors if t.numel()]
        if not present:
            return present
        self._count(present)
        pending: list[tuple[Any, list[Tensor], Tensor | None]] = []
        small: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for t in present:
            if not t.is_contiguous():
                raise ValueError("Collective.mean_ reduces contiguous tensors in place")
            per = max(1, self.bucket_bytes // t.element_size())
            if t.numel() * t.element_size() >= self.inplace_bytes:  # in place, in slices
                flat = t.view(-1)
                for start in range(0, flat.numel(), per):
                    part = flat[start : start + per]
                    work = dist.all_reduce(part, op=reduce_op, group=group, async_op=True)
                    pending.append((work, [], None))
            else:
                small.setdefault((t.dtype, t.device), []).append(t)
        for group_tensors in small.values():
            for bucket in _buckets(group_tensors, self.bucket_bytes):
                packed = torch.cat([t.reshape(-1) for t in bucket])
                work = dist.all_reduce(packed, op=reduce_op, group=group, async_op=True)
                pending.append((work, bucket, packed))
        for work, bucket, flat_bucket in pending:
            work.wait()
            if flat_bucket is not None:
                offset = 0
                for member in bucket:
                    member.copy_(flat_bucket[offset : offset + member.numel()].view_as(member))
                    offset += member.numel()
        return present

    def mean(self, grads: Sequence[Tensor | None]) -> Grads:
        """Averaged copies of gradients (autograd may hand out expanded or non-contiguous
        tensors, so they are not reduced in place); None stays None; sparse gradients (of a
        table) are summed sparse."""
        out: Grads = list(grads)
        dense = [
            (i, g.detach().contiguous().clone())
            for i, g in enumerate(grads)
            if g is not None and not g.is_sparse
        ]
        self.mean_([g for _, g in dense])
        for i, reduced in dense:
            out[i] = reduced
        for i, maybe in enumerate(grads):
            if maybe is not None and maybe.is_sparse:
                out[i] = self._sparse_mean(maybe)
        return out

    def _sparse_mean(self, g: Tensor) -> Tensor:
        import torch.distributed as dist

        g = g.coalesce()
        world = self.world_size
        counts = [torch.zeros(1, dtype=torch.int64, device=g.device) for _ in range(world)]
        mine = torch.tensor([g._nnz()], dtype=torch.int64, device=g.device)
        dist.all_gather(counts, mine, group=self.group)
        top = int(max(c.item() for c in counts))
        idx = torch.zeros(g.sparse_dim(), top, dtype=torch.int64, device=g.device)
        val = torch.zeros((top, *g.shape[g.sparse_dim() :]), dtype=g.dtype, device=g.device)
        idx[:, : g._nnz()] = g.indices()
        val[: g._nnz()] = g.values()
        idxs = [torch.empty_like(idx) for _ in range(world)]
        vals = [torch.empty_like(val) for _ in range(world)]
        dist.all_gather(idxs, idx, group=self.group)
        dist.all_gather(vals, val, group=self.group)
        self._count([idx, val])
        n = [int(c.item()) for c in counts]
        total = torch.sparse_coo_tensor(
            torch.cat([i[:, :k] for i, k in zip(idxs, n, strict=True)], dim=1),
            torch.cat([v[:k] for v, k in zip(vals, n, strict=True)]),
            g.shape,
        ).coalesce()
        return total / world

    def gather_rows(self, rows: Tensor) -> Tensor:
        """Per-sample rows (T, R_r) of every rank, concatenated in rank order along dim 1 and
        divided by W (ranks may hold different R_r: padded for the collective)."""
        import torch.distributed as dist

        world, group = self.world_size, self.group
        size = torch.tensor([rows.shape[1]], dtype=torch.int64, device=rows.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size, group=group)
        widths = [int(s.item()) for s in sizes]
        padded = rows.new_zeros(rows.shape[0], max(widths))
        padded[:, : rows.shape[1]] = rows
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous(), group=group)
        self._count([padded])
        return torch.cat([p[:, :w] for p, w in zip(parts, widths, strict=True)], dim=1) / world

    def broadcast(self, tensor: Tensor) -> Tensor:
        """Rank 0's value of ``tensor`` (of the group's first rank), on every rank."""
        import torch.distributed as dist

        group = self.group
        src = 0 if group is None else dist.get_global_rank(group, 0)
        out = tensor.detach().contiguous().clone()
        dist.broadcast(out, src=src, group=group)
        self._count([out])
        return out


def _buckets(tensors: list[Tensor], cap: int) -> list[list[Tensor]]:
    out: list[list[Tensor]] = [[]]
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if out[-1] and size + nbytes > cap:
            out.append([])
            size = 0
        out[-1].append(t)
        size += nbytes
    return out
