"""Nothing lost, nothing executed: checkpoints and spools handed to mtltrain by an unlucky or
hostile user (crafted, damaged, truncated files; symlinks; kills at awkward moments)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from mtltrain.tracking import RunSpool, Tracker, sync
from mtltrain.trainer import load_checkpoint_info

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("trainer_problem", HERE / "trainer_problem.py")
assert _spec is not None and _spec.loader is not None
P: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(P)


Stop = P.Stop
_stop_at = P.stop_at


def _trained_checkpoint(tmp_path: Path) -> Path:
    P.build(epochs=1, checkpoint_dir=str(tmp_path / "ckpt")).fit(*P.loaders())
    return tmp_path / "ckpt" / "last.pt"


class _Payload:
    """Unpickling this creates the marker file: what a crafted checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


# ------------------------------------------------------------------------------------------
# checkpoints are data
# ------------------------------------------------------------------------------------------
def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    last = _trained_checkpoint(tmp_path)
    state = torch.load(last, weights_only=False)  # our own file, in this test
    marker = tmp_path / "pwned"
    state["history"] = [_Payload(marker)]
    torch.save(state, last)  # an ordinary pickle, as an attacker would write it
    trainer = P.build(checkpoint_dir=str(tmp_path / "ckpt"))
    with pytest.raises(ValueError, match="could run code") as err:
        trainer.fit(*P.loaders(), resume=True)
    assert str(last) in str(err.value)
    assert not marker.exists()
    with pytest.raises(ValueError, match="could run code"):
        load_checkpoint_info(last)
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage, match",
    [
        ("flip", "checksum does not match"),
        ("truncate", "checksum|cut off|not a checkpoint"),
        ("garbage", "not a checkpoint"),
        ("empty", "not a checkpoint"),
    ],
)
def test_damaged_checkpoint_is_named_not_loaded(tmp_path: Path, damage: str, match: str) -> None:
    last = _trained_checkpoint(tmp_path)
    data = bytearray(last.read_bytes())
    if damage == "flip":  # one bit in the middle of the tensor data: torch alone loads it
        data[len(data) // 2] ^= 0x10
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"not a checkpoint at all\n" * 10)
    else:
        data = bytearray()
    last.write_bytes(bytes(data))
    trainer = P.build(checkpoint_dir=str(tmp_path / "ckpt"))
    with pytest.raises(ValueError, match=match) as err:
        trainer.fit(*P.loaders(), resume=True)
    assert str(last) in str(err.value)


def test_checkpoint_missing_entries_is_named(tmp_path: Path) -> None:
    from mtltrain.checkpoint import atomic_save

    last = _trained_checkpoint(tmp_path)
    state = torch.load(last, weights_only=True)
    del state["optimizer"], state["rng"]
    atomic_save(state, last)
    with pytest.raises(ValueError, match=r"lacks \['optimizer', 'rng'\]") as err:
        P.build(checkpoint_dir=str(tmp_path / "ckpt")).fit(*P.loaders(), resume=True)
    assert str(last) in str(err.value)


def test_checkpoints_load_as_weights_only_and_stay_torch_loadable(tmp_path: Path) -> None:
    """Both files load with torch's own weights-only loader (the checksum trailer does not get
    in the way), and resuming from them continues exactly (RNG states are plain values)."""
    ckpt = tmp_path / "ckpt"
    first = P.build(epochs=3, checkpoint_dir=str(ckpt), callbacks=[_stop_at(13)])
    with pytest.raises(Stop):
        first.fit(*P.loaders())
    state = torch.load(ckpt / "last.pt", weights_only=True)
    assert isinstance(state["rng"]["current"]["numpy"]["keys"], torch.Tensor)
    best = torch.load(ckpt / "best_model.pt", weights_only=True)
    assert set(best) == set(first.model.state_dict())
    reference = P.build(epochs=3).fit(*P.loaders())
    resumed = P.build(epochs=3, checkpoint_dir=str(ckpt)).fit(*P.loaders(), resume=True)
    assert resumed.val == reference.val and resumed.test == reference.test


def test_checkpoint_written_before_the_checksum_still_resumes(tmp_path: Path) -> None:
    """A last.pt as the previous mtltrain wrote it (plain torch.save, NumPy RNG state as an
    ndarray) resumes, loaded as data only."""
    import numpy as np

    ckpt = tmp_path / "ckpt"
    first = P.build(epochs=3, checkpoint_dir=str(ckpt), callbacks=[_stop_at(13)])
    with pytest.raises(Stop):
        first.fit(*P.loaders())
    state = torch.load(ckpt / "last.pt", weights_only=True)
    for key in ("epoch_start", "current"):
        if state["rng"][key] is not None:
            s = state["rng"][key]["numpy"]
            keys = s["keys"].numpy().astype(np.uint32)
            state["rng"][key]["numpy"] = (
                s["kind"], keys, s["pos"], s["has_gauss"], s["cached_gaussian"]
            )  # fmt: skip
    torch.save(state, ckpt / "last.pt")
    reference = P.build(epochs=3).fit(*P.loaders())
    resumed = P.build(epochs=3, checkpoint_dir=str(ckpt)).fit(*P.loaders(), resume=True)
    assert resumed.val == reference.val and resumed.test == reference.test


def test_checkpoint_temp_file_is_unpredictable_and_never_follows_a_link(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    # the name the old code used (pid-based), and a few others: none may be written through
    for name in (f".last.pt.{os.getpid()}.tmp", ".last.pt.tmp", "last.pt.tmp"):
        (ckpt / name).symlink_to(victim)
    trainer = P.build(epochs=1, checkpoint_dir=str(ckpt))
    trainer.fit(*P.loaders())
    assert victim.read_text() == "keep me"
    assert load_checkpoint_info(ckpt)["epoch"] == 1


def test_failed_save_leaves_the_old_checkpoint_and_no_temp_file(tmp_path: Path) -> None:
    last = _trained_checkpoint(tmp_path)
    before = last.read_bytes()
    trainer = P.build(checkpoint_dir=str(tmp_path / "ckpt"))
    state = trainer.state_dict()
    state["history"] = [lambda: None]  # cannot be pickled: the save fails half-way
    trainer.state_dict = lambda: state  # type: ignore[method-assign]
    with pytest.raises(Exception):  # noqa: B017 - pickle's own error: any is fine here
        trainer.save_checkpoint()
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["best_model.pt", "last.pt"]


_FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    import torch
    from mtltrain.checkpoint import atomic_save
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
    try:
        atomic_save({"w": torch.zeros(1_000_000)}, sys.argv[1])
    except OSError as e:
        print("OSError:", e)
    """
)


def test_write_failure_during_save_names_the_file_and_cleans_up(tmp_path: Path) -> None:
    """A save that cannot be written (a file-size limit stands in for a full disk) fails
    with an OSError naming the checkpoint, keeps the previous file and leaves no temp file."""
    target = tmp_path / "ckpt" / "last.pt"
    target.parent.mkdir()
    target.write_bytes(b"previous")
    proc = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(target)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OSError:") and str(target) in proc.stdout, proc.stdout
    assert "enforce fail" not in proc.stdout
    assert target.read_bytes() == b"previous"
    assert [p.name for p in target.parent.iterdir()] == ["last.pt"]


# ------------------------------------------------------------------------------------------
# spools: torn tails, damaged lines, lost and duplicated points, symlinks, secrets
# ------------------------------------------------------------------------------------------
def test_resume_after_a_torn_write_repairs_the_spool(tmp_path: Path) -> None:
    spool_root = tmp_path / "spool"
    tracker = Tracker("torn", spool_root=spool_root, log_every=1)
    tracker.log_params({"lr": 0.1})
    tracker.log_metrics({"loss": 1.0}, step=0)
    run_id = tracker.run_id
    tracker._spool.close_files()  # the process dies mid-write: half a line at the end
    with open(spool_root / run_id / "metrics.jsonl", "a") as f:
        f.write('{"key": "loss", "val')
    with open(spool_root / run_id / "params.jsonl", "a") as f:
        f.write('{"key": "b", ')
    with pytest.warns(UserWarning, match="cut an incomplete last line"):
        again = Tracker("torn", spool_root=spool_root, resume=run_id, log_every=1)
    again.log_params({"batch": 8})
    again.log_metrics({"loss": 0.5}, step=1)
    again.close()
    run = RunSpool.open(spool_root / run_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no damaged line is left to skip
        assert [(r.step, r.value) for r in run.read_metrics()] == [(0, 1.0), (1, 0.5)]
        assert run.read_params() == {"lr": "0.1", "batch": "8"}
    assert run.status == "FINISHED"


def test_readers_skip_a_damaged_line_and_name_it(tmp_path: Path, store_uri: str) -> None:
    spool_root = tmp_path / "spool"
    with Tracker("damaged", spool_root=spool_root) as tracker:
        tracker.log_metrics({"loss": 1.0}, step=0)
        tracker.log_metrics({"loss": 0.5}, step=1)
    path = tracker.spool_dir / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    bad = '{"key": "loss", "val{"key": "loss", "value": 9.0, "step": 5, "timestamp": 1}\n'
    path.write_text(lines[0] + bad + '{"key": "loss", "value": "x", "step": 6}\n' + lines[1])
    with pytest.warns(UserWarning, match=r"metrics.jsonl, line 2: damaged record") as record:
        got = RunSpool.open(tracker.spool_dir).read_metrics()
    assert [(r.step, r.value) for r in got] == [(0, 1.0), (1, 0.5)]
    assert any("line 3" in str(w.message) for w in record)
    with pytest.warns(UserWarning, match="damaged record"):
        (run_id,) = sync(spool_root, store_uri)  # the rest still reaches the store
    mlflow = pytest.importorskip("mlflow")
    history = mlflow.MlflowClient(store_uri).get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 0.5)]


@pytest.mark.parametrize("log_every", [50, 1])
def test_a_kill_after_a_checkpoint_loses_no_point_and_resume_logs_none_twice(
    tmp_path: Path, log_every: int
) -> None:
    """Step values are buffered (log_every); the checkpoint flushes them first, so a kill
    right after it loses nothing (log_every=50), and the resumed run does not log the steps it
    retrains again (log_every=1: they reached the spool before the kill): every (metric, step)
    is in the spool exactly once, with the uninterrupted run's value."""
    spool_root = tmp_path / "spool"
    with Tracker("reference", spool_root=spool_root / "ref", log_every=50) as ref_tracker:
        P.build(tracker=ref_tracker).fit(*P.loaders())
    reference = {
        (r.key, r.step): r.value
        for r in RunSpool.open(ref_tracker.spool_dir).read_metrics()
        if r.key.startswith(("train/", "val/", "test/"))
    }

    tracker = Tracker("killed", spool_root=spool_root, log_every=log_every)
    first = P.build(
        checkpoint_dir=str(tmp_path / "ckpt"),
        checkpoint_every=4,
        tracker=tracker,
        callbacks=[_stop_at(14)],  # two steps after the checkpoint at step 12
    )
    with pytest.raises(Stop):
        first.fit(*P.loaders())
    # a kill: nothing closes the tracker, its device buffer is gone
    steps = {r.step for r in RunSpool.open(tracker.spool_dir).read_metrics() if "loss/a" in r.key}
    assert set(range(12)) <= steps  # everything up to the checkpoint is on disk
    tracker._spool.close_files()

    resume = tracker.run_id
    with Tracker("killed", spool_root=spool_root, resume=resume, log_every=log_every) as again:
        P.build(checkpoint_dir=str(tmp_path / "ckpt"), tracker=again).fit(*P.loaders(), resume=True)
    records = RunSpool.open(again.spool_dir).read_metrics()
    counts = Counter((r.key, r.step) for r in records)
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1][:5]
    got = {
        (r.key, r.step): r.value for r in records if r.key.startswith(("train/", "val/", "test/"))
    }
    timing = {k for k in reference if "seconds" in k[0]}
    assert set(got) == set(reference)
    assert {k: v for k, v in got.items() if k not in timing} == {
        k: v for k, v in reference.items() if k not in timing
    }


def test_sync_refuses_artifacts_that_leave_the_run(tmp_path: Path, store_uri: str) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("do not upload")
    with Tracker("links", spool_root=tmp_path / "spool") as tracker:
        tracker.log_text("fine", "notes.txt")
    artifacts = tracker.spool_dir / "artifacts"
    (artifacts / "stolen.txt").symlink_to(secret)
    with pytest.raises(ValueError, match="outside its run directory") as err:
        sync(tmp_path / "spool", store_uri)
    assert "stolen.txt" in str(err.value)
    (artifacts / "stolen.txt").unlink()
    (artifacts / "dir").symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(ValueError, match="outside its run directory"):
        sync(tmp_path / "spool", store_uri)
    (artifacts / "dir").unlink()
    (run_id,) = sync(tmp_path / "spool", store_uri)
    mlflow = pytest.importorskip("mlflow")
    assert [a.path for a in mlflow.MlflowClient(store_uri).list_artifacts(run_id)] == ["notes.txt"]


def test_spool_files_linked_outside_the_run_are_not_read(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.jsonl"
    other.write_text('{"key": "leak", "value": 1.0, "step": 0, "timestamp": 0}\n')
    with Tracker("links", spool_root=tmp_path / "spool") as tracker:
        tracker.log_metrics({"loss": 1.0})
    (tracker.spool_dir / "metrics.jsonl").unlink()
    (tracker.spool_dir / "metrics.jsonl").symlink_to(other)
    with pytest.raises(ValueError, match="outside its run directory"):
        RunSpool.open(tracker.spool_dir).read_metrics()


def test_tracking_uri_secrets_are_never_written_or_shown(tmp_path: Path) -> None:
    from mtltrain.tracking.mlflow_sink import redact_uri

    assert redact_uri("http://alice:s3cret@host:5000/x") == "http://alice:***@host:5000/x"
    assert redact_uri("postgresql://u:p%40ss@db/mlflow") == "postgresql://u:***@db/mlflow"
    assert redact_uri("https://host/?token=abc&x=1") == "https://host/?token=***&x=1"
    assert redact_uri("https://host/?access_key=abc") == "https://host/?access_key=***"
    assert redact_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    uri = f"http://alice:s3cret@127.0.0.1:{_closed_port()}"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with Tracker("secrets", spool_root=tmp_path / "spool", tracking_uri=uri) as tracker:
            tracker.log_metrics({"loss": 1.0})
            tracker.flush(wait=True, timeout=30)
        assert "s3cret" not in repr(tracker)
    assert record and not any("s3cret" in str(w.message) for w in record)
    for path in (tmp_path / "spool").rglob("*"):
        if path.is_file():
            assert b"s3cret" not in path.read_bytes(), path


def test_synced_state_of_an_older_spool_is_rekeyed_without_the_secret(
    tmp_path: Path, store_uri: str
) -> None:
    """A synced.json written before redaction (keyed by the raw URI) is rewritten on the next
    upload under the redacted key, keeping its progress."""
    from mtltrain.tracking.mlflow_sink import MlflowSink

    with Tracker("rekey", spool_root=tmp_path / "spool") as tracker:
        tracker.log_metrics({"loss": 1.0})
    sink = MlflowSink(store_uri)
    sink.upload(tracker.spool_dir)
    path = tracker.spool_dir / "synced.json"
    data = json.loads(path.read_text())
    (state,) = data["stores"].values()
    raw = store_uri + "?password=hunter2"  # what an older version wrote as the key
    path.write_text(json.dumps({"format": 1, "stores": {raw: state}}))
    sink.tracking_uri = raw  # the same store, reached with a secret in the URI
    sink.upload(tracker.spool_dir)
    text = path.read_text()
    assert "hunter2" not in text
    assert json.loads(text)["stores"][store_uri + "?password=***"]["metrics_lines"] == 1


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_KILLED_WHILE_CREATING = textwrap.dedent(
    """
    import sys
    from mtltrain.tracking import Tracker
    print("start", flush=True)
    Tracker("new-store", spool_root=sys.argv[1], tracking_uri=sys.argv[2]).close()
    """
)


@pytest.mark.parametrize("kill_after", [0.0, 0.3, 1.0])
def test_a_new_store_killed_while_being_created_is_usable(
    tmp_path: Path, kill_after: float
) -> None:
    """MLflow migrates a new SQLite store over seconds; a kill in between used to leave a
    database that failed forever ("table ... already exists"). The store is now created
    under a temporary name and linked into place complete, so whenever the kill lands (here:
    a moment after the first database file appears), the next run works."""
    import signal
    import time

    mlflow = pytest.importorskip("mlflow")
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WHILE_CREATING, str(tmp_path / "spool"), uri],
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not any(p.name.startswith((".mlflow.db", "mlflow.db")) for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "no database was created"
        time.sleep(0.02)
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    with Tracker("after-kill", spool_root=tmp_path / "spool2", tracking_uri=uri) as tracker:
        tracker.log_metrics({"loss": 1.0})
        assert tracker.flush(wait=True, timeout=120) is True, tracker.sink_error
    client = mlflow.MlflowClient(uri)
    assert [m.value for m in client.get_metric_history(tracker.mlflow_run_id, "loss")] == [1.0]


_SPOOL_FULL = textwrap.dedent(
    """
    import resource, signal, sys, warnings
    import torch
    from mtltrain.tracking import Tracker
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    tracker = Tracker("full", spool_root=sys.argv[1], log_every=1000)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    for step in range(500):
        tracker.log_step({"train/loss": torch.tensor(float(step))}, step)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        tracker.close()
    print("|".join(str(w.message) for w in record))
    """
)


def test_a_full_disk_at_close_is_reported_as_such(tmp_path: Path) -> None:
    """The last buffered values cannot be written (a file-size limit stands in for a full
    disk): the warning says the spool could not be written, naming the file, not that a copy
    to the host failed."""
    proc = subprocess.run(
        [sys.executable, "-c", _SPOOL_FULL, str(tmp_path / "spool")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "could not write the last 500 step values" in proc.stdout, proc.stdout
    assert "metrics.jsonl" in proc.stdout and "copy" not in proc.stdout


def test_a_half_created_store_gets_a_message_that_says_what_to_do(tmp_path: Path) -> None:
    """A store left by the old, unsafe creation: tables present, no schema version recorded."""
    import sqlite3

    pytest.importorskip("mlflow")
    db = tmp_path / "mlflow.db"
    create = f"import mlflow; mlflow.MlflowClient('sqlite:///{db}').search_experiments()"
    subprocess.run([sys.executable, "-c", create], check=True, capture_output=True)
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE alembic_version")
    with Tracker("half", spool_root=tmp_path / "spool") as tracker:
        tracker.log_metrics({"loss": 1.0})
    with pytest.raises(RuntimeError, match="half-created") as err:
        sync(tmp_path / "spool", f"sqlite:///{db}")
    assert str(db) in str(err.value) and "delete it" in str(err.value)
