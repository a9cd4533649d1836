"""Compare two outputs of equivalence_run.py bit for bit.

    python equivalence_compare.py REFERENCE.pt CANDIDATE.pt

Every tensor must be equal (NaN where NaN), every number and message identical. The auto
engine's trial timings are wall-clock times and are left out; a scenario whose auto engine
chose a different engine (by timing) is not compared, and counted.
"""

from __future__ import annotations

import sys
from typing import Any

import torch


def scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k != "timings"}
    if isinstance(value, list | tuple):
        return type(value)(scrub(v) for v in value)
    return value


def differences(x: Any, y: Any, path: str) -> list[str]:
    if isinstance(x, torch.Tensor):
        same = (
            isinstance(y, torch.Tensor)
            and x.dtype == y.dtype
            and x.shape == y.shape
            and torch.equal(torch.nan_to_num(x, nan=1.2345), torch.nan_to_num(y, nan=1.2345))
        )
        return [] if same else [path]
    if isinstance(x, dict):
        if not isinstance(y, dict) or set(x) != set(y):
            return [f"{path}: keys"]
        return [d for k in x for d in differences(x[k], y[k], f"{path}.{k}")]
    if isinstance(x, list | tuple):
        if not isinstance(y, list | tuple) or len(x) != len(y):
            return [f"{path}: length"]
        return [
            d
            for i, (u, v) in enumerate(zip(x, y, strict=True))
            for d in differences(u, v, f"{path}[{i}]")
        ]
    if isinstance(x, float) and isinstance(y, float) and x != x and y != y:
        return []
    return [] if x == y else [f"{path}: {x!r} != {y!r}"]


def chosen(value: Any) -> Any:
    try:
        return value[1]["engine"]["state"]["chosen"]
    except (KeyError, IndexError, TypeError):
        return None


def main() -> None:
    a = {k: scrub(v) for k, v in torch.load(sys.argv[1], weights_only=False).items()}
    b = {k: scrub(v) for k, v in torch.load(sys.argv[2], weights_only=False).items()}
    timing = [k for k in a if "|auto|" in k and chosen(a[k]) != chosen(b.get(k))]
    compared = [k for k in a if k not in timing]
    bad = {k: d for k in compared if (d := differences(a[k], b.get(k), k))}
    errors = sum(1 for k in compared if a[k][0] == "error")
    print(
        f"{len(a)} scenarios; {len(timing)} auto-engine scenarios chose a different engine by "
        f"timing (not compared); {len(compared)} compared ({errors} raise, compared by "
        f"message): {len(bad)} differ"
    )
    for key, diff in list(bad.items())[:20]:
        print(" ", key, diff[:3])


if __name__ == "__main__":
    main()
