"""Gradient engines: how the ``(T, P)`` matrix of per-task gradients of the shared parameters
is obtained. Every engine here is exact; they differ in speed and memory only."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from .._params import FlatLayout


class BatchingUnsupported(RuntimeError):
    """A batched (vmapped) backward hit an operation without a vmap batching rule."""

    def __init__(self, op: str, original: BaseException):
        super().__init__(f"no vmap batching rule for {op}: {original}")
        self.op = op


@dataclass
class EngineInputs:
    """Everything an engine needs for one step.

    The engines differentiate the raw task losses, each through its own graph, seeded with the
    Jacobian of the loss transform: row t is ``∇θ ℓ̃_t = Σ_s (∂ℓ̃_t/∂ℓ_s) ∇θ ℓ_s``. For an
    elementwise transform (log, identity, …) that is ``(dℓ̃_t/dℓ_t) ∇θ ℓ_t``, and task t's
    backward never runs through another task's graph.

    Attributes:
        losses: the T raw task losses (scalars attached to the graph).
        seed: ``∂ℓ̃/∂ℓ``: a (T,) diagonal for elementwise transforms, else a (T, T) matrix.
        layout: the flat layout of the shared parameters.
        task_params: per task, the task's own parameters (may be empty lists).
        representation: the shared representation(s) ``z`` the heads read, or None.
    """

    losses: Sequence[Tensor]
    seed: Tensor
    layout: FlatLayout
    task_params: Sequence[Sequence[Tensor]]
    representation: tuple[Tensor, ...] | None = None

    @property
    def num_tasks(self) -> int:
        return len(self.losses)

    def row_seed(self, t: int) -> tuple[list[Tensor], list[Tensor]]:
        """Outputs and grad_outputs whose backward gives row t (``∇ ℓ̃_t``)."""
        if self.seed.dim() == 1:
            return [self.losses[t]], [self.seed[t].reshape(self.losses[t].shape)]
        return list(self.losses), [
            self.seed[t, s].reshape(loss.shape) for s, loss in enumerate(self.losses)
        ]

    def batched_seed(self, r0: int, r1: int) -> tuple[list[Tensor], list[Tensor]]:
        """Outputs and batched grad_outputs whose vmapped backward gives rows r0..r1-1."""
        full = torch.diag(self.seed) if self.seed.dim() == 1 else self.seed
        return list(self.losses), [
            full[r0:r1, s].reshape(r1 - r0, *loss.shape) for s, loss in enumerate(self.losses)
        ]


@dataclass
class EngineResult:
    """Per task, the gradients of its transformed loss w.r.t. its own parameters (None where a
    parameter was not reached), and for each shared parameter whether any task reached it."""

    task_grads: list[list[Tensor | None]]
    reached: list[bool] = field(default_factory=list)


class Engine:
    """Fills ``out`` (T, P) with ``∇θ ℓ̃_t`` in row t and returns the task-parameter gradients."""

    name: ClassVar[str] = "engine"
    needs_representation: ClassVar[bool] = False

    def compute(self, inputs: EngineInputs, out: Tensor, retain_graph: bool) -> EngineResult:
        raise NotImplementedError

    def state(self) -> dict[str, object]:
        return {}

    def load_state(self, state: dict[str, object]) -> None:
        pass


def write_row(out_row: Tensor, grads: Sequence[Tensor | None], layout: FlatLayout) -> None:
    """Copy per-parameter gradients into one row (or block of rows) of the flat matrix.

    ``out_row`` is (P,) or (c, P); each grad is shaped like its parameter, with a leading c for
    a block. Missing gradients (None) become zeros."""
    lead = out_row.shape[:-1]
    pieces = []
    for name, g, p in zip(layout.names, grads, layout.params, strict=True):
        if g is None:
            g = torch.zeros((*lead, *p.shape), device=out_row.device, dtype=out_row.dtype)
        elif g.layout != torch.strided:
            raise ValueError(
                f"shared parameter {name!r} has a sparse gradient (e.g. nn.Embedding(sparse="
                f"True)); the per-task gradient matrix is dense: pass such tables as "
                f"Balancer(tables=...) "
                f"(balanced approximately, sparse gradients kept) or build them with sparse=False"
            )
        pieces.append(g.reshape(*lead, -1))
    torch.cat(pieces, dim=-1, out=out_row)


_OP_RE = re.compile(r"(aten::\w+(?:\.\w+)?)")


def batching_op(message: str) -> str:
    m = _OP_RE.search(message)
    return m.group(1) if m else "an operation"


def is_batching_error(err: BaseException) -> bool:
    msg = str(err).lower()
    return ("batching rule" in msg) or ("vmap" in msg) or ("batched" in msg and "grad" in msg)


class VmapCall:
    """Runs ``torch.autograd.grad(..., is_grads_batched=True)``, turning missing batching rules
    into a clear :class:`BatchingUnsupported` error and, on the first calls, PyTorch's
    "performance drop" fallback warnings into one warning that names the operations.

    PyTorch emits those fallback warnings only after
    ``torch._C._debug_only_display_vmap_fallback_warnings(True)``; only then are warnings
    caught here. ``warnings.catch_warnings`` is process-wide, so catching otherwise would take in
    the warnings of every other thread (e.g. a tracking thread importing its client library)
    and show them again past the filters their own modules set."""

    def __init__(self, engine_name: str):
        self.engine_name = engine_name
        self.calls = 0
        self.slow_ops: set[str] = set()

    def __call__(
        self,
        outputs: Sequence[Tensor],
        inputs: Sequence[Tensor],
        grad_outputs: Sequence[Tensor],
        retain_graph: bool,
    ) -> tuple[Tensor | None, ...]:
        watch = self.calls < 2 and _fallback_warnings_on()
        try:
            with warnings.catch_warnings(record=True) if watch else nullcontext() as caught:
                if watch:
                    warnings.simplefilter("always")
                grads = torch.autograd.grad(
                    outputs,
                    inputs,
                    grad_outputs=grad_outputs,
                    retain_graph=retain_graph,
                    allow_unused=True,
                    is_grads_batched=True,
                )
            if caught:
                self._report(caught)
        except RuntimeError as err:
            if is_batching_error(err):
                raise BatchingUnsupported(batching_op(str(err)), err) from err
            raise
        self.calls += 1
        return grads

    def _report(self, caught: list[warnings.WarningMessage]) -> None:
        """Re-emit unrelated warnings; turn PyTorch's per-op "batching rule" fallback warnings
        into one warning that names the new ops."""
        new = set()
        for w in caught:
            if "batching rule" in str(w.message).lower():
                new.add(batching_op(str(w.message)))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        new -= self.slow_ops
        if new:
            self.slow_ops |= new
            warnings.warn(
                f"mtlbalance {self.engine_name} engine: no vmap batching rule for "
                f"{', '.join(sorted(new))}; PyTorch loops over the task rows for "
                f"{'this op' if len(new) == 1 else 'these ops'} (exact, but slower)",
                stacklevel=5,
            )


def _fallback_warnings_on() -> bool:
    """Whether PyTorch emits its vmap "performance drop" warnings (off unless a user turned
    them on with ``torch._C._debug_only_display_vmap_fallback_warnings(True)``)."""
    enabled = getattr(torch._C, "_debug_only_are_vmap_fallback_warnings_enabled", None)
    return bool(enabled()) if enabled is not None else False


def task_param_grads(
    inputs: EngineInputs, t: int, extra: Sequence[Tensor], retain_graph: bool
) -> tuple[list[Tensor | None], list[Tensor | None]]:
    """``∇ ℓ̃_t`` w.r.t. ``extra`` (e.g. the representation) and task t's own parameters, in one
    backward that runs only the part of the graph between them and the loss."""
    own = list(inputs.task_params[t])
    targets = [*extra, *own]
    if not targets:
        return [], []
    outputs, seeds = inputs.row_seed(t)
    grads = torch.autograd.grad(
        outputs, targets, grad_outputs=seeds, retain_graph=retain_graph, allow_unused=True
    )
    return list(grads[: len(extra)]), list(grads[len(extra) :])
