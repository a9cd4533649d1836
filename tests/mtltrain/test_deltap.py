"""Δp (Eq. (2) of the DB-MTL paper)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtltrain.deltap import delta_p, delta_p_per_task, mean_std

# The paper's Table 2 (Cityscapes): STL and EW rows.
DIRECTIONS = {
    "segmentation": {"mIoU": True, "PAcc": True},
    "depth": {"AErr": False, "RErr": False},
}
STL = {"segmentation": {"mIoU": 69.06, "PAcc": 91.54}, "depth": {"AErr": 0.01282, "RErr": 43.53}}
EW = {"segmentation": {"mIoU": 68.93, "PAcc": 91.58}, "depth": {"AErr": 0.01315, "RErr": 45.90}}


def test_cityscapes_table_2_ew_row() -> None:
    # The paper prints −2.05, a mean over three seeds of per-seed Δp; from the mean metrics of
    # the table the formula gives −2.04.
    assert round(delta_p(EW, STL, DIRECTIONS), 2) == -2.04
    per_task = delta_p_per_task(EW, STL, DIRECTIONS)
    assert per_task["segmentation"] == pytest.approx(
        100 * ((68.93 - 69.06) / 69.06 + (91.58 - 91.54) / 91.54) / 2
    )
    assert per_task["depth"] == pytest.approx(
        -100 * ((0.01315 - 0.01282) / 0.01282 + (45.90 - 43.53) / 43.53) / 2
    )


@given(
    values=st.lists(st.floats(0.1, 100.0), min_size=4, max_size=4),
    refs=st.lists(st.floats(0.1, 100.0), min_size=4, max_size=4),
    scale=st.floats(1e-3, 1e3),
)
def test_properties(values: list[float], refs: list[float], scale: float) -> None:
    res = {
        "segmentation": {"mIoU": values[0], "PAcc": values[1]},
        "depth": {"AErr": values[2], "RErr": values[3]},
    }
    ref = {
        "segmentation": {"mIoU": refs[0], "PAcc": refs[1]},
        "depth": {"AErr": refs[2], "RErr": refs[3]},
    }
    assert delta_p(ref, ref, DIRECTIONS) == 0.0
    base = delta_p(res, ref, DIRECTIONS)
    # units do not matter: scaling a metric and its reference leaves Δp unchanged
    res2 = {
        "segmentation": dict(res["segmentation"]),
        "depth": {**res["depth"], "RErr": values[3] * scale},
    }
    ref2 = {
        "segmentation": dict(ref["segmentation"]),
        "depth": {**ref["depth"], "RErr": refs[3] * scale},
    }
    assert delta_p(res2, ref2, DIRECTIONS) == pytest.approx(base, rel=1e-9, abs=1e-9)
    # flipping every direction flips the sign
    flipped = {t: {m: not h for m, h in ms.items()} for t, ms in DIRECTIONS.items()}
    assert delta_p(res, ref, flipped) == pytest.approx(-base, rel=1e-9, abs=1e-9)


def test_errors_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="STL reference has no task 'depth'"):
        delta_p(EW, {"segmentation": STL["segmentation"]}, DIRECTIONS)
    with pytest.raises(ValueError, match="results has no metric 'RErr' for task 'depth'"):
        delta_p({**EW, "depth": {"AErr": 0.1}}, STL, DIRECTIONS)
    with pytest.raises(ValueError, match="reference of depth/AErr is 0"):
        delta_p(EW, {**STL, "depth": {"AErr": 0.0, "RErr": 1.0}}, DIRECTIONS)
    with pytest.raises(ValueError, match="is nan"):
        delta_p({**EW, "depth": {"AErr": float("nan"), "RErr": 1.0}}, STL, DIRECTIONS)


def test_mean_std() -> None:
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError, match="at least one seed"):
        mean_std([])


def test_tasks_with_unequal_numbers_of_metrics_are_averaged_per_task_first() -> None:
    """Eq. (2): Δp = (1/T) Σ_t (1/N_t) Σ_i ±(M - M_STL)/M_STL · 100. With NYUv2's 2/2/5
    metrics the per-task mean and the mean over all metrics differ; worked out by hand."""
    directions = {
        "seg": {"mIoU": True, "PAcc": True},
        "depth": {"AErr": False, "RErr": False},
        "normal": {"mean": False, "median": False, "11.25": True, "22.5": True, "30": True},
    }
    ref = {
        "seg": {"mIoU": 50.0, "PAcc": 50.0},
        "depth": {"AErr": 1.0, "RErr": 1.0},
        "normal": {"mean": 10.0, "median": 10.0, "11.25": 10.0, "22.5": 10.0, "30": 10.0},
    }
    got = {
        "seg": {"mIoU": 55.0, "PAcc": 50.0},  # +10%, 0%        -> task +5%
        "depth": {"AErr": 1.0, "RErr": 1.0},  # 0%, 0%          -> task 0%
        "normal": {"mean": 12.0, "median": 12.0, "11.25": 10.0, "22.5": 10.0, "30": 10.0},
        # -20%, -20%, 0, 0, 0 -> task -8%
    }
    assert delta_p(got, ref, directions) == pytest.approx((5.0 + 0.0 - 8.0) / 3)
    assert delta_p_per_task(got, ref, directions) == pytest.approx(
        {"seg": 5.0, "depth": 0.0, "normal": -8.0}
    )
    # the mean over all 9 metrics would be (10 - 40) / 9 = -3.33, not -1.0


def test_mean_std_of_two_seeds_and_non_positive_references() -> None:
    """Sample std with n - 1 (two values a, b: |a - b| / √2), 0 for one value. A reference at or
    below 0 is refused: for -2 -> -1 (better, higher is better) Eq. (2) would give -50%."""
    assert mean_std([1.0, 3.0]) == pytest.approx((2.0, 2**0.5))
    assert mean_std([5.0]) == (5.0, 0.0)
    dirs = {"t": {"ll": True}}
    for ref in (-2.0, 0.0):
        with pytest.raises(ValueError, match=f"reference of t/ll is {ref}"):
            delta_p({"t": {"ll": -1.0}}, {"t": {"ll": ref}}, dirs)
    assert delta_p({"t": {"ll": 3.0}}, {"t": {"ll": 2.0}}, dirs) == pytest.approx(50.0)
