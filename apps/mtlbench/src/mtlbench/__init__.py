"""mtlbench: the benchmark command line of the mtlbalance workspace.

``mtlbench run SPEC`` trains the single-task reference and the balancing methods a spec names
(:mod:`mtlbench.runner`), tracked in MLflow through a local spool; ``mtlbench report SPEC``
builds the Δp tables beside the paper's numbers (:mod:`mtlbench.report`). Specs are TOML
files: those shipped in ``mtlbench/specs/``, a folder of your own (``--specs`` or
``$MTLBENCH_SPECS``), or any file given by path (:mod:`mtlbench.spec`); ``mtlbench init-spec
FILE`` drafts one for a CSV/Parquet table (:mod:`mtlbench.initspec`).
"""

from __future__ import annotations

__version__ = "0.1.0"
