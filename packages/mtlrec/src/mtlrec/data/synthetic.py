"""Synthetic multi-task data with explicit seeds.

- :func:`mmoe_synthetic`: the MMoE paper's two regression tasks with a task-correlation knob
  (Ma et al., KDD 2018, Section 3.2).
- :func:`synthetic_log`: a Criteo-shaped interaction log — Zipf-distributed categorical ids,
  heavy-tailed dense counts — with click, conversion (rare, only after a click) and dwell
  time in seconds, correlated through shared latent factors: three objectives whose losses
  differ by orders of magnitude (BCE ≈ 0.5, BCE ≈ 0.1, MSE in s² ≈ 10³), the case loss
  balancing is for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from .spec import DenseFeature, FeatureSpec, Label, SparseFeature

__all__ = [
    "mmoe_synthetic",
    "mmoe_synthetic_spec",
    "synthetic_log",
    "synthetic_log_spec",
    "write_frame",
]


def mmoe_synthetic(
    n: int,
    correlation: float,
    *,
    dim: int = 100,
    scale: float = 1.0,
    num_sin: int = 10,
    noise_std: float = 0.1,
    seed: int = 0,
) -> pl.DataFrame:
    """The MMoE paper's synthetic two-task regression (Section 3.2).

    Two orthogonal unit vectors ``u1, u2`` in R^dim; ``w1 = c·u1``,
    ``w2 = c·(p·u1 + sqrt(1-p²)·u2)`` with ``p = correlation`` (the cosine of the weight
    vectors, which the paper uses as the task-correlation knob; the labels' Pearson
    correlation grows with it but is not equal to it); ``x ~ N(0, I)``;
    ``y_i = w_iᵀx + Σ_{j≤m} sin(α_j·w_iᵀx + β_j) + ε_i`` with ``α_j, β_j ~ N(0, 1)`` shared
    by both tasks and ``ε_i ~ N(0, noise_std²)`` (the paper's N(0, 0.01) read as variance).

    Returns columns ``x0..x{dim-1}`` (float32), ``y1``, ``y2`` (float64); all randomness from
    ``numpy.random.default_rng(seed)``.
    """
    if not -1.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [-1, 1], not {correlation}")
    if n < 1 or dim < 2:
        raise ValueError(f"need n >= 1 and dim >= 2, not n={n}, dim={dim}")
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, 2)))
    u1, u2 = q[:, 0], q[:, 1]
    w1 = scale * u1
    w2 = scale * (correlation * u1 + np.sqrt(1.0 - correlation**2) * u2)
    alpha = rng.standard_normal(num_sin)
    beta = rng.standard_normal(num_sin)
    x = rng.standard_normal((n, dim))
    cols: dict[str, np.ndarray] = {f"x{i}": x[:, i].astype(np.float32) for i in range(dim)}
    for name, w in (("y1", w1), ("y2", w2)):
        z = x @ w
        y = z + np.sin(np.outer(z, alpha) + beta).sum(axis=1)
        cols[name] = y + noise_std * rng.standard_normal(n)
    return pl.DataFrame(cols)


def mmoe_synthetic_spec(dim: int = 100, *, standardize: bool = True) -> FeatureSpec:
    """Spec for :func:`mmoe_synthetic`: ``dim`` dense features (already N(0, 1), not
    normalised), regression tasks ``y1`` and ``y2`` (standardised on train unless
    ``standardize=False``)."""
    return FeatureSpec(
        dense=[DenseFeature(f"x{i}", norm="none") for i in range(dim)],
        labels=[
            Label("y1", "regression", standardize=standardize),
            Label("y2", "regression", standardize=standardize),
        ],
    )


def _zipf_ids(rng: np.random.Generator, card: int, n: int, a: float) -> np.ndarray:
    p = 1.0 / np.arange(1, card + 1, dtype=np.float64) ** a
    p /= p.sum()
    # Popular ids are not the small ones: a fixed random relabelling, as hashed ids look.
    relabel = rng.permutation(card)
    return relabel[rng.choice(card, size=n, p=p)]


def _bias_for_rate(logit: np.ndarray, rate: float) -> float:
    """``b`` with ``mean(sigmoid(logit + b)) ≈ rate`` (bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(logit + mid)))) < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def synthetic_log(
    n: int,
    *,
    seed: int = 0,
    num_sparse: int = 8,
    num_dense: int = 4,
    cardinalities: list[int] | None = None,
    zipf_a: float = 1.1,
    latent_dim: int = 8,
    correlation: float = 0.5,
    click_rate: float = 0.2,
    conversion_rate: float = 0.1,
    dwell_median_s: float = 30.0,
    signal: float = 2.0,
) -> pl.DataFrame:
    """A Criteo-shaped synthetic interaction log with three correlated objectives.

    Every categorical value has a latent vector (N(0, 1/num_sparse) per entry); a row's
    latent ``h`` is the sum over its values (plus N(0, 0.1²) noise). Each task ``t`` scores
    ``s_t = sqrt(ρ)·aᵀh + sqrt(1-ρ)·b_tᵀh`` with ``a, b_click, b_conv, b_dwell`` orthonormal,
    so ``ρ = correlation`` is the share of the signal the tasks have in common. Then

    - ``click ~ Bernoulli(σ(signal·s_click + b))``, ``b`` set so the rate ≈ ``click_rate``;
    - ``conversion = click · Bernoulli(σ(signal·s_conv + b'))`` with
      ``P(conversion | click) ≈ conversion_rate`` (so rare, and only after a click);
    - ``dwell`` (seconds, 0.1 s resolution): after a click
      ``dwell_median_s · exp(0.6·s_dwell + N(0, 0.5²))``; **0.0 without a click** (no visit,
      no time spent). Train it on all rows (a zero-inflated regression) or mask it to clicked
      rows; its MSE in s² is orders of magnitude above the two BCEs either way.

    Dense features ``I1..`` are heavy-tailed non-negative counts that partly reveal ``h``
    (``floor(exp(0.5·pᵀh + N(0, 0.5²)) · 3)``); categorical columns ``C1..`` hold int64 ids
    drawn Zipf-like (``P(rank k) ∝ k^-zipf_a``) from ``cardinalities`` (default geometric
    from 10 to 10⁵), relabelled at random as hashed ids are.

    All randomness from ``numpy.random.default_rng(seed)``.
    """
    if not 0.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [0, 1], not {correlation}")
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    for name, r in (("click_rate", click_rate), ("conversion_rate", conversion_rate)):
        if not 0.0 < r < 1.0:
            raise ValueError(f"{name} must be in (0, 1), not {r}")
    if cardinalities is None:
        cardinalities = [int(c) for c in np.geomspace(10, 100_000, num_sparse).round()]
    if len(cardinalities) != num_sparse or min(cardinalities, default=1) < 1:
        raise ValueError(
            f"cardinalities must be {num_sparse} positive ints (num_sparse), got {cardinalities}"
        )
    if latent_dim < 4:
        raise ValueError(
            f"latent_dim must be >= 4 (one shared, three task directions): {latent_dim}"
        )
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((latent_dim, 4)))
    a, b_click, b_conv, b_dwell = q.T
    cols: dict[str, np.ndarray] = {}
    h = 0.1 * rng.standard_normal((n, latent_dim))
    for i, card in enumerate(cardinalities):
        ids = _zipf_ids(rng, card, n, zipf_a)
        table = rng.standard_normal((card, latent_dim)) / np.sqrt(max(num_sparse, 1))
        h += table[ids]
        cols[f"C{i + 1}"] = ids.astype(np.int64)
    h /= h.std(axis=0, keepdims=True) + 1e-12
    proj = rng.standard_normal((latent_dim, num_dense)) / np.sqrt(latent_dim)
    noise = 0.5 * rng.standard_normal((n, num_dense))
    dense = np.floor(np.exp(0.5 * (h @ proj) + noise) * 3.0)
    for j in range(num_dense):
        cols[f"I{j + 1}"] = dense[:, j]
    shared = np.sqrt(correlation) * (h @ a)
    own = np.sqrt(1.0 - correlation)
    s_click = shared + own * (h @ b_click)
    s_conv = shared + own * (h @ b_conv)
    s_dwell = shared + own * (h @ b_dwell)
    lc = signal * s_click
    click = rng.random(n) < 1.0 / (1.0 + np.exp(-(lc + _bias_for_rate(lc, click_rate))))
    lv = signal * s_conv
    # Calibrated on the clicked rows: they are selected, and s_conv shares signal with s_click.
    b_conv = _bias_for_rate(lv[click] if click.any() else lv, conversion_rate)
    conv_given = rng.random(n) < 1.0 / (1.0 + np.exp(-(lv + b_conv)))
    conversion = click & conv_given
    dwell = dwell_median_s * np.exp(0.6 * s_dwell + 0.5 * rng.standard_normal(n))
    dwell = np.where(click, np.round(dwell, 1), 0.0)
    cols["click"] = click.astype(np.int8)
    cols["conversion"] = conversion.astype(np.int8)
    cols["dwell"] = dwell
    return pl.DataFrame(cols)


def synthetic_log_spec(
    num_sparse: int = 8,
    num_dense: int = 4,
    *,
    min_count: int = 1,
    hash_buckets: int = 0,
    tasks: tuple[str, ...] = ("click", "conversion", "dwell"),
    standardize: bool = True,
) -> FeatureSpec:
    """Spec for :func:`synthetic_log`: sparse ``C*`` (optionally rare values to
    ``hash_buckets`` hashed ids), dense ``I*`` (log then standardised), tasks click and
    conversion (binary) and dwell (regression, seconds; the target is standardised on train
    unless ``standardize=False``, which keeps the raw seconds and so the loss-scale gap)."""
    dense, labels = log_dense_and_labels(num_dense, tasks, standardize, "synthetic_log")
    return FeatureSpec(
        sparse=[
            SparseFeature(
                f"C{i + 1}",
                min_count=min_count,
                oov="hash" if hash_buckets else "zero",
                hash_buckets=hash_buckets,
            )
            for i in range(num_sparse)
        ],
        dense=dense,
        labels=labels,
    )


def log_dense_and_labels(
    num_dense: int, tasks: Sequence[str], standardize: bool, what: str
) -> tuple[list[DenseFeature], list[Label]]:
    """The dense ``I*`` features (log, then standardised) and the labels of a generated
    click / conversion / dwell log (``what`` names the log in the error for an unknown task)."""
    kinds = {"click": "binary", "conversion": "binary", "dwell": "regression"}
    for t in tasks:
        if t not in kinds:
            raise ValueError(f"unknown task {t!r}; {what} has {list(kinds)}")
    dense = [DenseFeature(f"I{j + 1}", log=True) for j in range(num_dense)]
    labels = [Label(t, kinds[t], standardize=standardize) for t in tasks]  # type: ignore[arg-type]
    return dense, labels


def write_frame(df: pl.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as Parquet (``.parquet``/``.pq``), TSV (``.tsv``) or CSV (anything else)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        df.write_parquet(p)
    elif suffix == ".tsv":
        df.write_csv(p, separator="\t")
    else:
        df.write_csv(p)
    return p
