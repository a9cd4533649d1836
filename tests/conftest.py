"""Suite-wide rules.

Under CI (``CI=true``) a test skipped because a dependency the CI installs cannot be imported
fails instead: a broken install must not turn into quietly skipped tests.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator

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


_LISTENING = re.compile(r"running on http://127\.0\.0\.1:(\d+)")


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[subprocess.Popen[str], int]]]:
    """``serve(argv, timeout=180)`` starts an MLflow server command (``mlflow server --port 0``,
    ``mlflow ui``, ``mtlbench ui``) in its own process group and returns ``(process, port)``
    once the server says it listens (uvicorn's "running on http://127.0.0.1:PORT" line on
    stderr): a handshake, not a poll of a guessed port. With ``--port 0`` the kernel picks
    a free port, so two tests never race for one. Every server is killed at teardown."""
    started: list[tuple[subprocess.Popen[str], threading.Thread]] = []

    def start(
        argv: list[str], timeout: float = 180.0, cwd: str | os.PathLike[str] | None = None
    ) -> tuple[subprocess.Popen[str], int]:
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True, cwd=cwd,
        )  # fmt: skip
        lines: queue.Queue[str | None] = queue.Queue()

        def drain() -> None:  # keeps reading, so the server never blocks on a full pipe
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        started.append((proc, reader))
        seen: list[str] = []
        while True:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"{argv[:4]} said nothing for {timeout:.0f} s; its stderr: {seen}")
            if line is None:
                pytest.fail(f"{argv[:4]} exited ({proc.wait()}) before listening: {seen[-20:]}")
            seen.append(line.rstrip())
            match = _LISTENING.search(line)
            if match:
                return proc, int(match.group(1))

    yield start
    for proc, reader in started:
        if proc.poll() is None:  # SIGTERM first: `mtlbench ui` then stops its own server group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        reader.join(30)
        if proc.stderr is not None:
            proc.stderr.close()
