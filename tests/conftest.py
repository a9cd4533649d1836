"""Suite-wide rules.

Under CI (``CI=true``) a test skipped because a dependency the CI installs cannot be imported
fails instead: a broken install must not turn into quietly skipped tests.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

# what `python3 -m nox -s tests` installs, so what CI must be able to import
INSTALLED_IN_CI = {
    "mlflow", "torchrec", "fbgemm_gpu", "scipy", "sklearn", "polars", "torch_geometric",
    "torchvision", "rdkit", "qm9pack", "hypothesis", "matplotlib",
}  # fmt: skip
_IMPORT_SKIP = re.compile(r"could not import '([\w.]+)'")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and _in_ci() and isinstance(report.longrepr, tuple)):
        return
    match = _IMPORT_SKIP.search(str(report.longrepr[2]))
    if match and match.group(1).split(".")[0] in INSTALLED_IN_CI:
        report.outcome = "failed"
        report.longrepr = (
            f"{match.group(1)} could not be imported under CI=true, where it is installed: "
            f"the environment is broken ({report.longrepr[2]})"
        )
