"""mtlbench: the benchmark command line of the mtlbalance workspace.

``mtlbench run SPEC`` trains the single-task reference and the balancing methods a spec names
(:mod:`mtlbench.runner`), tracked in MLflow through a local spool; ``mtlbench report SPEC``
builds the Δp tables beside the paper's numbers (:mod:`mtlbench.report`). Specs are TOML
files under ``benchmarks/specs/`` (:mod:`mtlbench.spec`).
"""

from __future__ import annotations

__version__ = "0.1.0"
