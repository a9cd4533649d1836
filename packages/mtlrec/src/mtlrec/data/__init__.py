"""Data for multi-objective recommendation, on polars.

- Feature specs (:class:`FeatureSpec`, fitted on train into :class:`FittedFeatures`, saved
  as JSON) turn frames into tensors (:class:`RecBatch`: :class:`RecInputs` + labels).
- Readers for real formats return lazy frames and their spec: :func:`census_income`,
  :func:`read_aliexpress`, :func:`read_ali_ccp_csv`, :func:`read_ali_ccp_esmm`,
  :func:`read_criteo`, :func:`read_table` (any CSV/Parquet: :func:`scan_table`).
- Generators: :func:`mmoe_synthetic`, :func:`synthetic_log`, :func:`write_criteo_log`
  (millions of rows written file by file, :func:`criteo_log_spec`).
- Loaders: :class:`RecLoader` (in memory), :func:`iter_batches` / :class:`LazyLoader`
  (streamed from a file), :class:`ShardedParquetLoader` (each rank streams its share of
  the row groups of Parquet files; :mod:`mtlrec.data.stream`).
- Errors: every problem in the data is a :class:`DataError` naming the file, the line and/or
  data row and the column (:mod:`mtlrec.data.errors`); rows are counted in the file, also
  after splitting or shuffling (the readers' origin columns :data:`ORIGIN_FILE`,
  :data:`ORIGIN_ROW`).
"""

from __future__ import annotations

from .batch import Jagged, RecBatch, RecInputs
from .errors import ORIGIN_COLUMNS, ORIGIN_FILE, ORIGIN_ROW
from .loader import LazyLoader, RecLoader, iter_batches, make_loader
from .readers import (
    ALI_CCP_ESMM_FIELDS,
    CENSUS_COLUMNS,
    CENSUS_DENSE,
    Source,
    Splits,
    census_income,
    data_dir,
    read_ali_ccp_csv,
    read_ali_ccp_esmm,
    read_aliexpress,
    read_criteo,
    read_table,
    scan_table,
    split_frame,
)
from .spec import (
    LABEL_KINDS,
    NULL_TOKEN,
    DataError,
    DenseFeature,
    FeatureSpec,
    FittedFeatures,
    Label,
    MultiHotFeature,
    SparseFeature,
)
from .stream import ShardedParquetLoader, criteo_log_spec, write_criteo_log
from .synthetic import (
    mmoe_synthetic,
    mmoe_synthetic_spec,
    synthetic_log,
    synthetic_log_spec,
    write_frame,
)

__all__ = [
    "ALI_CCP_ESMM_FIELDS",
    "CENSUS_COLUMNS",
    "CENSUS_DENSE",
    "LABEL_KINDS",
    "NULL_TOKEN",
    "ORIGIN_COLUMNS",
    "ORIGIN_FILE",
    "ORIGIN_ROW",
    "DataError",
    "DenseFeature",
    "FeatureSpec",
    "FittedFeatures",
    "Jagged",
    "Label",
    "LazyLoader",
    "MultiHotFeature",
    "RecBatch",
    "RecInputs",
    "RecLoader",
    "ShardedParquetLoader",
    "Source",
    "SparseFeature",
    "Splits",
    "census_income",
    "criteo_log_spec",
    "data_dir",
    "iter_batches",
    "make_loader",
    "mmoe_synthetic",
    "mmoe_synthetic_spec",
    "read_ali_ccp_csv",
    "read_ali_ccp_esmm",
    "read_aliexpress",
    "read_criteo",
    "read_table",
    "scan_table",
    "split_frame",
    "synthetic_log",
    "synthetic_log_spec",
    "write_criteo_log",
    "write_frame",
]
