"""What training gives back, and how it is recorded: per-epoch and final results, and the
``final.*`` metric keys a tracked run ends with (read back by ``mtlbench report``).

The selected epoch's single values are named with dots, not slashes: ``final.test.<task>.
<metric>``, ``final.epoch``, ``final.test.delta_p``. The MLflow UI puts a run's charts in
sections named by a key's part before its last '/', in alphabetical order, and keys without a
'/' in its last section; so a run's page shows the per-task curves (``train/...``,
``val/...``, ``test/...``) first and these single values last. (Until this version they were
``final/<split>/<task>/<metric>``, ``final/epoch``, ``final/test/delta_p``; ``mtlbench``
reads both.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .deltap import Directions, Metrics

__all__ = [
    "FINAL_EPOCH",
    "FINAL_TEST_DELTA_P",
    "EpochResult",
    "FitResult",
    "final_key",
    "final_metrics",
    "results_markdown",
]

FINAL_PREFIX = "final"
#: the selected epoch (0-based), logged at step 0
FINAL_EPOCH = f"{FINAL_PREFIX}.epoch"
#: test Δp of the selected epoch against the test reference, when there is one
FINAL_TEST_DELTA_P = f"{FINAL_PREFIX}.test.delta_p"


def final_key(split: str, task: str, metric: str) -> str:
    """The key of a selected-epoch metric: ``final.<split>.<task>.<metric>``."""
    return f"{FINAL_PREFIX}.{split}.{task}.{metric}"


@dataclass
class EpochResult:
    """What one epoch gave (host values)."""

    epoch: int
    steps: int
    lr: float
    seconds: float
    val: Metrics | None = None
    test: Metrics | None = None
    val_delta_p: float | None = None
    test_delta_p: float | None = None
    skipped_steps: int = 0


@dataclass
class FitResult:
    """The outcome of :meth:`Trainer.fit`.

    Attributes:
        best_epoch: the selected epoch (0-based).
        selection: what selection compared against: ``"stl"`` (the given validation reference),
            ``"first_epoch"`` (the run's own first-epoch validation metrics), ``"last"``.
        val, test: metrics at the selected epoch (test None without a test loader).
        test_delta_p: Δp of ``test`` against the test reference, when one was given.
        history: every epoch, in order.
        stopped_early: early stopping ended the run.
        steps: optimizer steps taken (skipped fp16 overflow steps excluded).
    """

    best_epoch: int
    selection: str
    val: Metrics | None
    test: Metrics | None
    test_delta_p: float | None
    history: list[EpochResult]
    stopped_early: bool
    steps: int


def final_metrics(result: FitResult, tasks: Sequence[str]) -> dict[str, float]:
    """The ``final.*`` metrics of ``result`` for ``tasks`` (what a tracked run ends with)."""
    final: dict[str, float] = {FINAL_EPOCH: float(result.best_epoch)}
    for split, metrics in (("val", result.val), ("test", result.test)):
        if metrics is None:
            continue
        for task in tasks:
            for m, v in metrics[task].items():
                final[final_key(split, task, m)] = v
    if result.test_delta_p is not None:
        final[FINAL_TEST_DELTA_P] = result.test_delta_p
    return final


def results_markdown(result: FitResult, directions: Directions, tasks: Sequence[str]) -> str:
    """The selected epoch's validation and test metrics as a Markdown table."""
    lines = [
        f"Selected epoch {result.best_epoch + 1} of {len(result.history)} "
        f"(selection: {result.selection}); {result.steps} optimizer steps.",
        "",
        "| split | task | metric | value |",
        "|---|---|---|---|",
    ]
    for split, metrics in (("val", result.val), ("test", result.test)):
        if metrics is None:
            continue
        for task in tasks:
            for m, v in metrics[task].items():
                arrow = "↑" if directions[task][m] else "↓"
                lines.append(f"| {split} | {task} | {m} {arrow} | {v:.6g} |")
    if result.test_delta_p is not None:
        lines += ["", f"Test Δp against the STL reference: {result.test_delta_p:+.2f}%"]
    return "\n".join(lines) + "\n"
