"""The command line when things go wrong: reruns over earlier checkpoints, crafted
checkpoints, mistakes in specs found before anything trains, a tracking server that answers
its health check and then stalls, secrets in tracking URIs, two runs sharing one --out, and
`mtlbench ui` stopped with SIGTERM."""

from __future__ import annotations

import fcntl
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mtlbench.cli import main

from .conftest import TINY


def _one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.startswith("mtlbench ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


RUN = ["run", "tiny", "--methods", "ew", "--epochs", "1", "--no-tracking", "--quiet"]
LAST = Path("mtlbench-out/checkpoints/tiny/ew-seed0/last.pt")


# ------------------------------------------------------------------------------------------
# checkpoints from an earlier invocation
# ------------------------------------------------------------------------------------------
def test_rerun_refuses_to_overwrite_checkpoints_until_told(
    specs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(RUN) == 0
    before = LAST.read_bytes()
    capsys.readouterr()
    assert main(RUN) == 2
    _one_line_error(capsys.readouterr().err, "--resume", "--restart", str(LAST))
    assert LAST.read_bytes() == before  # nothing deleted, nothing trained
    assert main([*RUN, "--resume", "--restart"]) == 2
    capsys.readouterr()
    os.utime(LAST, (0, 0))
    assert main([*RUN, "--restart"]) == 0
    assert LAST.stat().st_mtime > 0  # written again from scratch


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_resume_from_a_crafted_checkpoint_runs_nothing(
    specs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(RUN) == 0
    state = torch.load(LAST, weights_only=False)  # our own file, in this test
    marker = tmp_path / "pwned"
    state["best"] = _Payload(marker)
    torch.save(state, LAST)
    capsys.readouterr()
    assert main([*RUN, "--resume"]) == 2
    _one_line_error(capsys.readouterr().err, str(LAST), "could run code")
    assert not marker.exists()


def test_a_file_where_out_should_be_is_one_line(
    specs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    assert main([*RUN, "--out", str(tmp_path / "taken")]) == 2
    _one_line_error(capsys.readouterr().err, "taken")


# ------------------------------------------------------------------------------------------
# spec mistakes, found before anything trains
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "methods, needle",
    [
        (["ew", "DB_MTL"], "did you mean 'dbmtl'"),
        (["ew", "Nash_MTL"], "did you mean 'nashmtl'"),
        (["ew", "log+PCGrad_"], "did you mean 'log+pcgrad'"),
        (["ew", "dbmtll"], "did you mean 'dbmtl'"),
    ],
)
def test_unknown_method_is_named_before_anything_trains(
    specs: Path, capsys: pytest.CaptureFixture[str], methods: list[str], needle: str
) -> None:
    assert main([*RUN, "--methods", *methods]) == 2
    _one_line_error(capsys.readouterr().err, needle)
    assert not Path("mtlbench-out/checkpoints").exists()  # ew did not train first
    assert not Path("mtlruns-spool").exists()


@pytest.mark.parametrize(
    "extra, needles",
    [
        ("[method_options.dbmtll]\nbeta = 0.5\n", ["[method_options.dbmtll]", "dbmtl"]),
        ('[method_options.ew]\nbeta = "0.9"\n', ["method 'ew'", "beta"]),
        ('[method_options.dbmtl]\nbeta = "0.9"\n', ["method 'dbmtl'", "beta"]),
    ],
)
def test_bad_method_options_are_named_before_anything_trains(
    specs: Path, capsys: pytest.CaptureFixture[str], extra: str, needles: list[str]
) -> None:
    (specs / "tiny.toml").write_text(TINY + extra)
    assert main([*RUN, "--methods", "ew", "dbmtl"]) == 2
    _one_line_error(capsys.readouterr().err, "tiny.toml", *needles)
    assert not Path("mtlbench-out/checkpoints").exists()


@pytest.mark.parametrize(
    "old, new, needle",
    [
        ("lr = 3e-3", "lr = 3e-3\neval_batch_size = 0", "train.eval_batch_size"),
        ("lr = 3e-3", 'lr = "fast"', "train.lr"),
        ("lr = 3e-3", 'lr = 3e-3\nweight_decay = "0.1"', "train.weight_decay"),
        ("lr = 3e-3", 'lr = 3e-3\nmomentum = "0.9"', "train.momentum"),
        ("lr = 3e-3", 'lr = 3e-3\noptimizer = "adagrad"', "train.optimizer"),
        ("lr = 3e-3", 'lr = 3e-3\nscheduler = {type = "step", step_size = "2"}', "step_size"),
    ],
)
def test_bad_train_values_name_the_key_and_file(
    specs: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, needle: str
) -> None:
    (specs / "tiny.toml").write_text(TINY.replace(old, new))
    assert main(RUN) == 2
    _one_line_error(capsys.readouterr().err, "tiny.toml", needle)


def test_spec_that_is_not_utf8_names_the_file(
    specs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (specs / "tiny.toml").write_bytes(TINY.replace("a tiny", "a t\xefny").encode("latin-1"))
    assert main(RUN) == 2
    _one_line_error(capsys.readouterr().err, "tiny.toml", "UTF-8")


# ------------------------------------------------------------------------------------------
# tracking stores
# ------------------------------------------------------------------------------------------
class _Stalls(http.server.BaseHTTPRequestHandler):
    """Answers /health, then never answers an API call (a half-alive tracking server)."""

    def do_GET(self) -> None:
        if self.path.startswith("/health"):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")
            return
        time.sleep(3600)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stalled_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stalls)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_a_stalled_store_does_not_hold_up_training(
    specs: Path, tmp_path: Path, stalled_server: str
) -> None:
    """Before: > 10 min waiting for the lookup of earlier STL runs. Now each store call has a
    deadline; the run warns, trains and keeps its records in the spool."""
    cmd = [sys.executable, "-m", "mtlbench.cli", *RUN[:-2], "--quiet", "--store-timeout", "2"]
    start = time.monotonic()
    proc = subprocess.run(
        [*cmd, "--tracking-uri", stalled_server],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 200
    assert "did not answer within 2 s" in proc.stderr, proc.stderr
    spooled = [json.loads((d / "meta.json").read_text())["tags"].get("mtlbench.kind")
               for d in (tmp_path / "mtlruns-spool").iterdir()]  # fmt: skip
    assert sorted(map(str, spooled)) == ["None", "group", "report"]  # the run, spooled


def test_report_from_a_stalled_store_says_to_use_the_spool(
    specs: Path, stalled_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    start = time.monotonic()
    code = main(["report", "tiny", "--tracking-uri", stalled_server, "--store-timeout", "1"])
    assert code == 2 and time.monotonic() - start < 60
    _one_line_error(capsys.readouterr().err, "did not answer within 1 s", "--from-spool")


def test_secrets_in_the_tracking_uri_are_never_printed(
    specs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://alice:s3cret@127.0.0.1:{port}"
    with pytest.warns(UserWarning):
        assert main([*RUN[:-2], "--quiet", "--tracking-uri", uri]) == 0
    assert main(["sync", "mtlruns-spool", "--tracking-uri", uri]) == 2
    out, err = capsys.readouterr()
    assert "alice:***@" in out + err
    assert "s3cret" not in out + err
    for path in Path("mtlruns-spool").rglob("*"):
        if path.is_file():
            assert b"s3cret" not in path.read_bytes(), path


# ------------------------------------------------------------------------------------------
# processes
# ------------------------------------------------------------------------------------------
def test_two_runs_cannot_share_one_out_dir(
    specs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shared-out"
    out.mkdir()
    with open(out / ".mtlbench.lock", "a+") as held:  # another run holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        assert main([*RUN, "--out", str(out)]) == 2
        _one_line_error(capsys.readouterr().err, "another mtlbench run (pid 4242)", str(out))
    assert main([*RUN, "--out", str(out)]) == 0  # free again


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout):
            return True
    except OSError:
        return False


def test_ui_stops_its_server_on_sigterm(tmp_path: Path, serve) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("mlflow")
    port = _free_port()
    uri = f"sqlite:///{tmp_path / 'ui.db'}"
    proc, listening = serve(
        [sys.executable, "-m", "mtlbench.cli", "ui", "--tracking-uri", uri, "--port", str(port)]
    )
    assert listening == port and _answers(port, timeout=60)
    try:
        os.kill(proc.pid, signal.SIGTERM)  # only mtlbench itself, as a service manager would
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _answers(port) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _answers(port), "the MLflow server outlived mtlbench ui"
    finally:
        subprocess.run(["pkill", "-f", "--", f"--port {port}"], check=False)
