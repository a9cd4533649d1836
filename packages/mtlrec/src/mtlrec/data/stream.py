"""Streaming a large Parquet log across ranks: a Criteo-shaped generator that writes
millions of rows file by file, and a loader that gives each rank its share of the row groups.

- :func:`write_criteo_log`: ``files`` Parquet files of a generated log — 26 sparse features
  ``C1..C26`` with large tables (ids ``[0, cardinality)``, Zipf-popular), 13 dense counts
  ``I1..I13``, and three objectives: ``click``, ``conversion`` (only after a click) and
  ``dwell`` seconds (a regression, only after a click; 0.0 without one). Memory: one file at
  a time. :func:`criteo_log_spec` is its feature spec (hashed ids: no vocabulary to fit).
- :class:`ShardedParquetLoader`: rank r of W reads row groups ``r, r + W, r + 2W, …`` of the
  files (in file order), streamed through :func:`~mtlrec.data.iter_batches` /
  :class:`~mtlrec.data.LazyLoader` (never the whole set in memory), and yields the same number
  of batches on every rank (a step is a collective: a rank with one more batch would wait for
  ever), computed from the files' metadata alone.

Bad input is a :class:`~mtlrec.data.DataError` naming the file, the row group and the column:
a file that is not Parquet, a missing column, a column whose type differs between files, and
the value checks of :meth:`~mtlrec.data.FittedFeatures.transform` (data row and column, with
the row group added).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from torch import Tensor

from .batch import RecInputs
from .errors import DataError
from .loader import LazyLoader, _check_batch_size
from .readers import _with_origin
from .spec import FeatureSpec, FittedFeatures, SparseFeature
from .synthetic import _bias_for_rate, log_dense_and_labels

__all__ = [
    "CRITEO_DENSE",
    "CRITEO_SPARSE",
    "RowGroup",
    "ShardedParquetLoader",
    "criteo_cardinalities",
    "criteo_log_spec",
    "parquet_row_groups",
    "write_criteo_log",
]

CRITEO_SPARSE = 26
CRITEO_DENSE = 13
_LATENT = 8  # latent dimension of the generator
_LATENT_ROWS = 4096  # distinct latent vectors per feature (ids hash onto them)


def criteo_cardinalities(largest: int = 1_000_000, smallest: int = 4, count: int = 26) -> list[int]:
    """``count`` table sizes from ``smallest`` to ``largest``, geometric (Criteo's range from a
    few values to millions of hashed ids)."""
    if not (1 <= smallest <= largest) or count < 1:
        raise ValueError(f"need 1 <= smallest <= largest and count >= 1: {smallest}, {largest}")
    return [int(c) for c in np.geomspace(smallest, largest, count).round()]


def _coprime_multiplier(card: int) -> int:
    for m in (1_000_003, 998_244_353, 2_147_483_647):
        if np.gcd(m, card) == 1:
            return m
    return 1


@dataclass(frozen=True)
class _LogModel:
    """The generator's fixed parameters (from the seed; the same for every file)."""

    latent: list[np.ndarray]  # per sparse feature: (min(card, _LATENT_ROWS), _LATENT)
    directions: np.ndarray  # (4, _LATENT): shared, click, conversion, dwell (orthonormal)
    dense_proj: np.ndarray  # (_LATENT, num_dense)
    cards: list[int]


def _log_model(seed: int, cards: Sequence[int], num_dense: int) -> _LogModel:
    rng = np.random.default_rng([seed, 0])
    q, _ = np.linalg.qr(rng.standard_normal((_LATENT, 4)))
    latent = [
        rng.standard_normal((min(c, _LATENT_ROWS), _LATENT)) / np.sqrt(len(cards)) for c in cards
    ]
    proj = rng.standard_normal((_LATENT, num_dense)) / np.sqrt(_LATENT)
    return _LogModel(latent, q.T.copy(), proj, list(cards))


def _chunk(
    model: _LogModel,
    n: int,
    rng: np.random.Generator,
    *,
    zipf_a: float,
    click_bias: float,
    conv_bias: float,
    dwell_median_s: float,
    signal: float,
) -> pl.DataFrame:
    cols: dict[str, np.ndarray] = {}
    h = 0.3 * rng.standard_normal((n, _LATENT))
    for i, card in enumerate(model.cards):
        ranks = (rng.zipf(zipf_a, n) - 1) % card  # popular ranks first, a heavy tail
        ids = (ranks * _coprime_multiplier(card) + 7 * i) % card  # relabelled, as hashed ids
        table = model.latent[i]
        h += table[ids % table.shape[0]]
        cols[f"C{i + 1}"] = ids.astype(np.int64)
    h /= 1.2  # roughly unit variance per latent coordinate
    noise = 0.5 * rng.standard_normal((n, model.dense_proj.shape[1]))
    dense = np.floor(np.exp(0.5 * (h @ model.dense_proj) + noise) * 3.0)
    for j in range(dense.shape[1]):
        cols[f"I{j + 1}"] = dense[:, j]
    shared, d_click, d_conv, d_dwell = (h @ d for d in model.directions)
    s_click = 0.7 * shared + 0.7 * d_click
    s_conv = 0.7 * shared + 0.7 * d_conv
    s_dwell = 0.7 * shared + 0.7 * d_dwell
    click = rng.random(n) < 1.0 / (1.0 + np.exp(-(signal * s_click + click_bias)))
    conv = click & (rng.random(n) < 1.0 / (1.0 + np.exp(-(signal * s_conv + conv_bias))))
    dwell = dwell_median_s * np.exp(0.6 * s_dwell + 0.5 * rng.standard_normal(n))
    cols["click"] = click.astype(np.int8)
    cols["conversion"] = conv.astype(np.int8)
    cols["dwell"] = np.where(click, np.round(dwell, 1), 0.0)
    return pl.DataFrame(cols)


def write_criteo_log(
    directory: str | Path,
    rows: int,
    *,
    files: int = 1,
    row_group_size: int = 65_536,
    cardinalities: Sequence[int] | None = None,
    num_dense: int = CRITEO_DENSE,
    seed: int = 0,
    zipf_a: float = 1.2,
    click_rate: float = 0.2,
    conversion_rate: float = 0.1,
    dwell_median_s: float = 30.0,
    signal: float = 2.0,
) -> list[Path]:
    """Write a Criteo-shaped generated log of ``rows`` rows as ``files`` Parquet files
    ``part-00000.parquet, …`` in ``directory`` (row groups of ``row_group_size`` rows);
    returns their paths. One file is in memory at a time.

    Columns: ``C1..C{len(cardinalities)}`` (int64 ids in ``[0, cardinality)``; default
    :func:`criteo_cardinalities`, 26 tables from 4 to 10⁶ rows), ``I1..I{num_dense}``
    (heavy-tailed non-negative counts), ``click``, ``conversion`` (int8; a conversion only
    after a click), ``dwell`` (seconds, 0.1 s resolution, only after a click; 0.0 without).

    The labels depend on the features: each id has a latent vector (ids of one feature hash
    onto up to 4096 of them, ``N(0, 1/26)`` per entry), a row's latent ``h`` is their sum
    plus noise; with orthonormal directions ``a, b_t``: ``s_t = 0.7 aᵀh + 0.7 b_tᵀh``,
    ``click ~ Bernoulli(σ(signal·s_click + b))`` (``b`` set on the first 2¹⁶ rows so the rate
    ≈ ``click_rate``), ``conversion = click · Bernoulli(σ(signal·s_conv + b'))``
    (``P(conversion | click) ≈ conversion_rate``), ``dwell = click · dwell_median_s ·
    exp(0.6 s_dwell + N(0, 0.5²))``; the dense counts are ``floor(3 exp(0.5 pᵀh + N(0,
    0.5²)))``. Ids are Zipf-popular (``P(rank k) ∝ k^-zipf_a``), relabelled by a fixed
    bijection. Deterministic in ``seed`` (file ``k`` draws from ``default_rng([seed, 1, k])``).
    """
    if rows < 1 or files < 1 or rows < files:
        raise ValueError(f"need rows >= files >= 1, got rows={rows}, files={files}")
    if row_group_size < 1:
        raise ValueError(f"row_group_size must be >= 1, not {row_group_size}")
    cards = list(cardinalities) if cardinalities is not None else criteo_cardinalities()
    if not cards or min(cards) < 1:
        raise ValueError(f"cardinalities must be positive ints, got {cards}")
    if zipf_a <= 1.0:
        raise ValueError(f"zipf_a must be > 1 (numpy's Zipf), not {zipf_a}")
    for name, r in (("click_rate", click_rate), ("conversion_rate", conversion_rate)):
        if not 0.0 < r < 1.0:
            raise ValueError(f"{name} must be in (0, 1), not {r}")
    model = _log_model(seed, cards, num_dense)
    # calibrate the biases once, on a fixed sample of rows
    probe_rng = np.random.default_rng([seed, 2])
    s_click, s_conv = _probe_scores(model, min(rows, 65_536), probe_rng, zipf_a)
    click_bias = _bias_for_rate(signal * s_click, click_rate)
    # conversion is calibrated on the clicked rows (selected, and correlated with s_conv)
    clicked = probe_rng.random(s_click.shape[0]) < 1.0 / (
        1.0 + np.exp(-(signal * s_click + click_bias))
    )
    conv_bias = _bias_for_rate(
        signal * (s_conv[clicked] if clicked.any() else s_conv), conversion_rate
    )
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    per_file = [rows // files + (1 if k < rows % files else 0) for k in range(files)]
    for k, n in enumerate(per_file):
        df = _chunk(
            model,
            n,
            np.random.default_rng([seed, 1, k]),
            zipf_a=zipf_a,
            click_bias=click_bias,
            conv_bias=conv_bias,
            dwell_median_s=dwell_median_s,
            signal=signal,
        )
        path = out_dir / f"part-{k:05d}.parquet"
        df.write_parquet(path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def _probe_scores(
    model: _LogModel, n: int, rng: np.random.Generator, zipf_a: float
) -> tuple[np.ndarray, np.ndarray]:
    h = 0.3 * rng.standard_normal((n, _LATENT))
    for i, card in enumerate(model.cards):
        ranks = (rng.zipf(zipf_a, n) - 1) % card
        ids = (ranks * _coprime_multiplier(card) + 7 * i) % card
        h += model.latent[i][ids % model.latent[i].shape[0]]
    h /= 1.2
    shared, d_click, d_conv, _ = (h @ d for d in model.directions)
    return 0.7 * shared + 0.7 * d_click, 0.7 * shared + 0.7 * d_conv


def criteo_log_spec(
    cardinalities: Sequence[int] | None = None,
    num_dense: int = CRITEO_DENSE,
    *,
    embedding_dim: int | None = None,
    tasks: tuple[str, ...] = ("click", "conversion", "dwell"),
    standardize: bool = True,
) -> FeatureSpec:
    """The spec of :func:`write_criteo_log`'s files: each ``C*`` hashed into as many buckets as
    its cardinality (no vocabulary, ``max_vocab=0``: fitting reads the dense statistics only,
    and a sample is enough), ``I*`` log-then-standardised, tasks click and conversion
    (binary) and dwell (regression, standardised unless ``standardize=False``)."""
    cards = list(cardinalities) if cardinalities is not None else criteo_cardinalities()
    dense, labels = log_dense_and_labels(num_dense, tasks, standardize, "the log")
    return FeatureSpec(
        sparse=[
            SparseFeature(
                f"C{i + 1}",
                max_vocab=0,
                oov="hash",
                hash_buckets=card,
                embedding_dim=embedding_dim,
            )
            for i, card in enumerate(cards)
        ],
        dense=dense,
        labels=labels,
    )


# ---------------------------------------------------------------------- the loader
@dataclass(frozen=True)
class RowGroup:
    """One Parquet row group: its file, index in the file, first row (0-based) and size."""

    path: str
    index: int
    offset: int
    rows: int


def parquet_row_groups(paths: Sequence[str | Path], columns: Sequence[str] = ()) -> list[RowGroup]:
    """The row groups of ``paths`` in order, from the files' metadata (nothing else is read).
    Each file must be Parquet, hold ``columns``, and give every column the type the first
    file gives it; else a :class:`DataError` naming the file and column."""
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    if not paths:
        raise ValueError("no files to read: give at least one Parquet file")
    groups: list[RowGroup] = []
    first_schema: pa.Schema | None = None
    first_path = ""
    for p in map(str, paths):
        if not Path(p).is_file():
            raise DataError("the file does not exist", path=p, fix="Check the path")
        try:
            meta = pq.read_metadata(p)
            schema = pq.read_schema(p)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(
                f"the file is not readable as Parquet ({str(e).splitlines()[0]})",
                path=p,
                fix="Write it with polars/pyarrow write_parquet, or remove it from the list",
            ) from e
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise DataError(
                f"the file has no column(s) {missing} (it has {schema.names[:8]}"
                f"{'…' if len(schema.names) > 8 else ''})",
                path=p,
                column=missing[0],
                fix="Every file must hold the spec's feature and label columns",
            )
        if first_schema is None:
            first_schema, first_path = schema, p
        else:
            for c in columns:
                a, b = first_schema.field(c).type, schema.field(c).type
                if a != b:
                    raise DataError(
                        f"the column has type {b} here but {a} in {first_path}",
                        path=p,
                        column=c,
                        fix="Write every file with the same column types",
                    )
        offset = 0
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            groups.append(RowGroup(p, i, offset, n))
            offset += n
    return groups


class ShardedParquetLoader:
    """Rank ``rank`` of ``world``'s share of Parquet files: ``(RecInputs, {task: target})``
    batches of ``batch_size`` rows, streamed.

    The row groups of all files (in order) are dealt round robin: rank r reads groups
    ``r, r + W, …``. Every rank yields :attr:`steps` batches, the same number on every rank
    (``min_r ⌊rows_r / batch_size⌋``, from the metadata: no communication), so the rows
    beyond that on the larger shards are skipped (:attr:`skipped_rows` on this rank). Batches
    stream through :class:`~mtlrec.data.LazyLoader` (``shuffle`` within a window of
    ``shuffle_window`` batches; the global torch RNG, so seed it per rank if the ranks should
    differ). At most a window of batches and one row group's chunk are held.

    Errors: a :class:`DataError` naming the file, row group and column (see the module doc);
    the value checks of :meth:`FittedFeatures.transform` name the file's data row and column
    and get the row group added.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        fitted: FittedFeatures,
        batch_size: int,
        *,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = False,
        shuffle_window: int = 16,
    ) -> None:
        _check_batch_size(batch_size)
        if not (isinstance(world, int) and world >= 1 and isinstance(rank, int)):
            raise ValueError(f"rank and world must be ints, world >= 1: {rank}, {world}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, world={world})")
        self.fitted = fitted
        self.batch_size = batch_size
        self.rank, self.world = rank, world
        self.shuffle, self.shuffle_window = shuffle, shuffle_window
        self.row_groups = parquet_row_groups(paths, fitted.spec.columns)
        if len(self.row_groups) < world:
            raise ValueError(
                f"{len(self.row_groups)} row group(s) for {world} ranks: every rank needs at "
                f"least one; write the files with smaller row groups (row_group_size)"
            )
        shares = [self.row_groups[r::world] for r in range(world)]
        rows = [sum(g.rows for g in s) for s in shares]
        self.mine = shares[rank]
        self.steps = min(rows) // batch_size
        """Batches per epoch, the same on every rank."""
        self.skipped_rows = rows[rank] - self.steps * batch_size
        if self.steps == 0:
            raise ValueError(
                f"the smallest rank's share holds {min(rows)} rows, less than one batch of "
                f"{batch_size}: use a smaller batch or more data"
            )

    def __len__(self) -> int:
        return self.steps

    def _frame(self) -> pl.LazyFrame:
        parts = [
            _with_origin(pl.scan_parquet(g.path), g.path).slice(g.offset, g.rows) for g in self.mine
        ]
        return pl.concat(parts, how="vertical") if len(parts) > 1 else parts[0]

    def _group_of(self, path: str | None, row: int | None) -> RowGroup | None:
        if path is None or row is None:
            return None
        for g in self.row_groups:
            if g.path == path and g.offset < row <= g.offset + g.rows:
                return g
        return None

    def __iter__(self) -> Iterator[tuple[RecInputs, dict[str, Tensor]]]:
        loader = LazyLoader(
            self._frame(),
            self.fitted,
            self.batch_size,
            shuffle=self.shuffle,
            shuffle_window=self.shuffle_window,
            drop_last=True,
        )
        it = iter(loader)
        for _ in range(self.steps):
            try:
                batch = next(it)
            except DataError as e:
                group = self._group_of(e.path, e.row)
                if group is None:
                    raise
                problem = e.problem
                if e.value is not None:
                    problem = (
                        problem.replace("{value}", e.value)
                        if "{value}" in problem
                        else f"{problem}: {e.value}"
                    )
                raise DataError(
                    f"(row group {group.index}) {problem}",
                    path=e.path,
                    row=e.row,
                    line=e.line,
                    column=e.column,
                    fix=e.fix,
                    task=e.task,
                ) from e
            yield batch
