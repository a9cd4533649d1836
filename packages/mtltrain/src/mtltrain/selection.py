"""Model selection by validation Δp (Eq. (2) of the DB-MTL paper), with early-stopping counts.

The reference is the single-task (STL) validation metrics when given, else the run's own
first-epoch validation metrics (LibMTL's behaviour); :attr:`Selection.against` says which.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from .deltap import Directions, Metrics, delta_p
from .results import EpochResult

__all__ = ["Selection"]


class Selection:
    """Keeps the best epoch so far.

    Args:
        directions: task -> metric -> higher is better, for the tasks selection uses.
        reference: STL validation metrics, or None (then the first epoch's are used).
    """

    def __init__(self, directions: Directions, reference: Metrics | None) -> None:
        self.directions = directions
        self.reference = reference
        self.first_val: Metrics | None = None
        self.best: dict[str, Any] | None = None
        self.bad_epochs = 0

    @property
    def against(self) -> str:
        return "stl" if self.reference is not None else "first_epoch"

    def update(self, record: EpochResult) -> bool:
        """Set ``record.val_delta_p``; make ``record`` the best epoch when it beats it (and
        count an epoch without improvement otherwise). Returns whether it improved."""
        assert record.val is not None
        if self.first_val is None:
            self.first_val = copy.deepcopy(record.val)
        reference = self.reference if self.reference is not None else self.first_val
        value = record.val_delta_p = delta_p(record.val, reference, self.directions)
        if self.best is not None and value <= self.best["val_delta_p"]:
            self.bad_epochs += 1
            return False
        self.best = {"epoch": record.epoch, "val_delta_p": value, "against": self.against}
        self.bad_epochs = 0
        return True

    def reselect(self, history: Iterable[EpochResult]) -> None:
        """Recompute every finished epoch's validation Δp against the current reference and
        pick the best epoch again (the reference changed since a checkpoint)."""
        self.best, self.bad_epochs = None, 0
        for record in history:
            if record.val is not None:
                self.update(record)
