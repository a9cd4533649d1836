"""The check between the stages that compute and the stages that change state: every loss and
gradient finite and in the transform's domain, in ONE device-to-host copy, before anything is
written to ``.grad`` or to the balancer's state.

Without a loss scale it runs only with ``check_finite`` and a non-finite value raises. With
one it always runs, and a non-finite gradient (an overflow of the scaled backward) skips the
step instead; non-finite losses and domain violations still raise with ``check_finite``.
A gradient whose fast norm comes out non-finite is looked at again (rare path): a finite one
whose norm overflows is reported as such, with its norm computed without overflow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._norms import exact_norm, norms, overflow_message
from . import perrank
from .context import Grads, Setup, Step


def reached(setup: Setup, flags: Sequence[bool]) -> None:
    """Every shared parameter is reached by some task's loss (or ``allow_unused``)."""
    if setup.options.allow_unused:
        return
    missing = [n for n, r in zip(setup.layout.names, flags, strict=True) if not r]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise ValueError(
            f"shared parameter(s) {shown} are reached by no task's loss; remove them from "
            f"the shared parameters (or freeze them), or pass allow_unused=True"
        )


def tables_reached(setup: Setup, flags: Sequence[bool]) -> None:
    if setup.options.allow_unused:
        return
    missing = [n for (n, _), r in zip(setup.tables, flags, strict=True) if not r]
    if missing:
        raise ValueError(
            f"table(s) {', '.join(missing)} are reached by no task's loss; remove them from "
            f"`tables` (or freeze them), or pass allow_unused=True"
        )


def gate(
    setup: Setup,
    step: Step,
    *,
    row_norms: Tensor | None = None,
    rows: Tensor | None = None,
    task_grads: Sequence[Grads] = (),
    combined: Sequence[Tensor] = (),
    combined_norms: Tensor | None = None,
) -> bool:
    """Check the step's losses and the gradients given; True: skip the step (a loss scale
    was given and a gradient overflowed). ``row_norms`` are the per-task norms of ``rows``,
    ``combined_norms`` those of ``combined`` (what the shared parameters and the tables get
    from one combined gradient)."""
    scale_bad = step.scale_bad
    if scale_bad is None and not setup.options.check_finite:
        return False
    det = step.vec.detach()
    num_tasks = det.shape[0]
    zeros = torch.zeros(num_tasks, dtype=torch.bool, device=det.device)
    domain = setup.transform.domain_violation(det)
    own = [
        ~torch.isfinite(norms(present)).all()
        if (present := [g for g in grads if g is not None])
        else torch.zeros((), dtype=torch.bool, device=det.device)
        for grads in task_grads
    ]
    flags = [
        ~torch.isfinite(det),
        zeros if domain is None else domain,
        zeros if row_norms is None else ~torch.isfinite(row_norms),
        torch.stack(own).to(det.device) if own else zeros,
    ]
    shared_bad = torch.zeros((), dtype=torch.bool, device=det.device)
    if combined_norms is not None:
        shared_bad = ~torch.isfinite(combined_norms).all().to(det.device)
    scale_flag = torch.zeros((), dtype=torch.bool, device=det.device)
    if scale_bad is not None:
        scale_flag = scale_bad.to(det.device)
    host = (
        torch.cat([torch.stack(flags).reshape(-1), shared_bad.reshape(1), scale_flag.reshape(1)])
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
    names = setup.task_names
    if not setup.options.check_finite:
        bad_loss = bad_domain = [False] * num_tasks
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
                f"loss of task {names[t]!r} is {values[t]:g}: {setup.transform.domain_message()}"
            )
    flagged: list[tuple[str, list[Tensor], str]] = []  # (subject, tensors, not-finite message)
    for t in range(num_tasks):
        if bad_grad[t] or bad_own[t]:
            where = "shared" if bad_grad[t] else "task-specific"
            if bad_grad[t] and rows is not None:
                tensors = [rows[t]]
            else:
                tensors = [g for g in task_grads[t] if g is not None] if task_grads else []
            subject = f"the gradient of task {names[t]!r} w.r.t. its {where} parameters"
            flagged.append((subject, tensors, f"{subject} is not finite (loss {float(det[t]):g})"))
    if host[-2]:
        subject = "the combined gradient of the shared parameters"
        flagged.append((subject, list(combined), f"{subject} is not finite"))
    return _verdict(
        flagged,
        skip=scale_bad is not None,
        norm_of=lambda ts: perrank.exact_norm(setup, step, ts),
    )


def _verdict(
    flagged: list[tuple[str, list[Tensor], str]],
    *,
    skip: bool,
    not_finite: Callable[[list[str]], str] | None = None,
    norm_of: Callable[[list[Tensor]], float | None] = exact_norm,
) -> bool:
    """Skip (an overflow under a loss scale), or raise for the first flagged gradient: as
    not finite, or — when it is finite and only its norm overflowed — as too large.
    ``not_finite`` builds the message from every non-finite item's message instead;
    ``norm_of`` gives the exact norm (across the ranks for per-rank tables: every rank
    decides the same)."""
    if not flagged:
        return False
    found = [(s, ts, m, norm_of(ts) if ts else None) for s, ts, m in flagged]
    if skip and any(norm is None for *_, norm in found):
        return True  # an overflow of the scaled backward: the caller skips the step
    subject, tensors, message, norm = found[0]
    if norm is not None:
        raise FloatingPointError(overflow_message(subject, tensors, norm))
    if not_finite is not None:
        raise FloatingPointError(not_finite([m for *_, m, n in found if n is None]))
    raise FloatingPointError(f"{message}; nothing was written to .grad or to the balancer's state")


def gate_combined(setup: Setup, step: Step) -> bool:
    """:func:`gate` after one combined backward: the task-specific gradients and what the
    shared parameters and the tables get (``step.combined``, its norms)."""
    return gate(
        setup,
        step,
        task_grads=step.task_grads,
        combined=step.combined,
        combined_norms=step.combined_norms,
    )


def gate_tables(setup: Setup, step: Step) -> bool:
    """The tables' gradients are finite (one more device-to-host copy; only with
    ``check_finite`` or a loss scale). True: skip the step (a loss scale was given)."""
    if step.scale_bad is None and not setup.options.check_finite:
        return False
    named = [
        (n, g) for (n, _), g in zip(setup.tables, step.table_grads, strict=True) if g is not None
    ]
    if not named:
        return False
    bad = (~torch.isfinite(perrank.norms(step, [g for _, g in named]))).cpu().tolist()
    flagged = [
        (f"the gradient of table {n}", [g], n) for (n, g), b in zip(named, bad, strict=True) if b
    ]
    return _verdict(
        flagged,
        skip=step.scale_bad is not None,
        norm_of=lambda ts: perrank.exact_norm(setup, step, ts),
        not_finite=lambda names: (
            f"the gradient of table(s) {', '.join(names)} is not finite; nothing was written "
            f"to .grad (the aggregator has already taken this step's finite shared gradients)"
        ),
    )
