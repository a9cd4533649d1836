"""The suite's own rules (tests/conftest.py), checked on a throwaway test file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.parametrize("ci, outcome", [("true", "FAILED"), ("", "SKIPPED [1]")])
def test_missing_ci_dependency_fails_only_under_ci(ci: str, outcome: str) -> None:
    probe = HERE / "test_zz_probe_ci_rule.py"
    probe.write_text(
        "import pytest\n\ndef test_probe():\n    pytest.importorskip('scipy.not_a_module')\n"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", str(probe), "-p", "no:cacheprovider", "-q"],
            capture_output=True,
            text=True,
            env={**os.environ, "CI": ci},
            cwd=HERE.parent,
            timeout=120,
        )
    finally:
        probe.unlink()
    assert outcome in proc.stdout, proc.stdout
