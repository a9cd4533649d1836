"""mtltrain.tracking against a real MLflow (SQLite store, and one real ``mlflow server``).

What is checked: a run's params, per-step and per-epoch metrics, tags and artifacts read back
with MlflowClient; a store that is unreachable from the start, or fails mid-run, loses nothing
(the spool has it all and ``sync`` uploads it, the remainder only, once); a killed process's
spool syncs as KILLED; buffered step values equal logging them one by one and reach the host
only every ``log_every`` steps; without MLflow the tracker warns and spools; bad input fails
with errors that name the problem.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import mtlbalance
from mtltrain.tracking import RunSpool, Tracker, TrackingWarning, sync
from mtltrain.tracking.spool import validate_key
from mtltrain.tracking.sync import process_alive

from .conftest import (
    HostReads,
    artifact_files,
    assert_store_has_spool,
    closed_port,
    history,
    spool_metrics,
)


def _client(uri: str):
    mlflow = pytest.importorskip("mlflow")
    return mlflow.MlflowClient(uri)


def _tracking_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, TrackingWarning)]


def _tiny_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    encoder = nn.Linear(4, 3)
    heads = nn.ModuleDict({"ctr": nn.Linear(3, 1), "cvr": nn.Linear(3, 1)})
    x = torch.randn(8, 4, generator=g)
    ys = {t: torch.randn(8, 1, generator=g) for t in heads}

    def losses():
        z = encoder(x)
        return {t: ((heads[t](z) - ys[t]) ** 2).mean() for t in heads}

    return encoder, heads, losses


# ------------------------------------------------------------------------------------------
# a whole run, read back from the store
# ------------------------------------------------------------------------------------------
def test_run_is_read_back_with_mlflow_client(tmp_path, store_uri, experiment):
    encoder, heads, losses = _tiny_problem()
    balancer = mtlbalance.DBMTL(encoder, dict(heads))
    opt = torch.optim.SGD([*encoder.parameters(), *heads.parameters()], lr=0.1)
    plot_dir = tmp_path / "plots"
    plot_dir.mkdir()
    (plot_dir / "weights.csv").write_text("step,ctr,cvr\n0,1,1\n")
    (plot_dir / "sub").mkdir()
    (plot_dir / "sub" / "loss.svg").write_text("<svg/>")
    config = {"method": "dbmtl", "optim": {"lr": 0.1, "name": "sgd"}, "tasks": ["ctr", "cvr"]}

    expected_stats: dict[str, list[tuple[int, float]]] = {}
    with Tracker(
        experiment,
        spool_root=tmp_path / "spool",
        tracking_uri=store_uri,
        run_name="dbmtl-seed0",
        tags={"team": "ranking"},
        log_every=4,
        upload_interval=0.0,
    ) as tracker:
        tracker.log_params(config)
        tracker.log_dict(config, "config.json")
        for epoch in range(2):
            for i in range(5):
                step = epoch * 5 + i
                opt.zero_grad()
                stats = balancer.backward(losses())
                opt.step()
                tracker.log_balance_stats(stats, step)
                tracker.log_step({"train/lr": 0.1 / (1 + step)}, step)
                for k, v in stats.to_dict().items():  # reference values (its own host copy)
                    expected_stats.setdefault(f"train/{k}", []).append((step, v))
            tracker.log_metrics({"val/loss/ctr": 1.0 / (epoch + 1), "val/auc": 0.6 + epoch}, epoch)
        tracker.log_metrics({"delta_p": -1.25}, step=0)
        tracker.log_artifact(plot_dir, "figures")
        tracker.log_text("| method | Δp |\n| dbmtl | -1.25 |\n", "tables/results.md")
        tracker.set_tags({"stage": "final"})
        spool_dir = tracker.spool_dir

    client = _client(store_uri)
    run = client.get_run(tracker.mlflow_run_id)
    meta = json.loads((spool_dir / "meta.json").read_text())
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "dbmtl-seed0"
    assert (run.info.start_time, run.info.end_time) == (meta["start_time"], meta["end_time"])
    assert client.get_experiment(run.info.experiment_id).name == experiment
    assert run.data.params == {
        "method": "dbmtl",
        "optim.lr": "0.1",
        "optim.name": "sgd",
        "tasks": "['ctr', 'cvr']",
    }
    assert run.data.tags["team"] == "ranking"
    assert run.data.tags["stage"] == "final"
    assert run.data.tags["mtltrain.spool_run_id"] == tracker.run_id

    # per-step balancer stats: exactly what BalanceStats reports, at every step
    assert {"train/loss/ctr", "train/grad_norm/cvr", "train/weight/ctr"} <= set(expected_stats)
    for key, rows in expected_stats.items():
        assert history(client, run.info.run_id, key) == rows, key
    assert history(client, run.info.run_id, "train/lr") == [(s, 0.1 / (1 + s)) for s in range(10)]
    # per-epoch and final metrics
    assert history(client, run.info.run_id, "val/loss/ctr") == [(0, 1.0), (1, 0.5)]
    assert history(client, run.info.run_id, "val/auc") == [(0, 0.6), (1, 1.6)]
    assert history(client, run.info.run_id, "delta_p") == [(0, -1.25)]

    # artifacts: the files and their contents
    assert sorted(artifact_files(client, run.info.run_id)) == [
        "config.json",
        "figures/plots/sub/loss.svg",
        "figures/plots/weights.csv",
        "tables/results.md",
    ]
    out = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "download")))
    assert json.loads((out / "config.json").read_text()) == config
    assert (out / "figures/plots/weights.csv").read_text() == "step,ctr,cvr\n0,1,1\n"
    assert (out / "tables/results.md").read_text().startswith("| method | Δp |")
    # artifacts of a created experiment live beside the SQLite file, not in the cwd
    assert run.info.artifact_uri.startswith(Path(store_uri[len("sqlite:///") :]).parent.as_uri())

    # syncing a run the live upload completed sends nothing: the store is unchanged
    assert sync(spool_dir, store_uri) == [run.info.run_id]
    assert_store_has_spool(client, run.info.run_id, spool_dir)


def test_nan_metric_is_recorded_and_reported(tmp_path, store_uri, experiment):
    tracker = Tracker(experiment, spool_root=tmp_path, tracking_uri=store_uri, upload_interval=0)
    with pytest.warns(RuntimeWarning, match=r"'val/loss' is nan at step 3"):
        tracker.log_metrics({"val/loss": float("nan")}, step=3)
    tracker.log_metrics({"val/loss": float("nan")}, step=4)  # warned once per key
    tracker.close()
    stored = history(_client(store_uri), tracker.mlflow_run_id, "val/loss")
    assert [step for step, _ in stored] == [3, 4]
    assert all(math.isnan(value) for _, value in stored)


# ------------------------------------------------------------------------------------------
# the store fails: nothing is lost
# ------------------------------------------------------------------------------------------
def _log_some(tracker: Tracker, steps: range, tmp_path: Path) -> None:
    for step in steps:
        loss = torch.tensor(step / 7.0, dtype=torch.float64)
        tracker.log_step({"train/loss/a": loss, "train/lr": 1.0 / (step + 1)}, step)
        if step % 5 == 4:
            tracker.log_metrics({"val/acc": step / 100.0}, step=step // 5)


def test_unreachable_server_loses_nothing(tmp_path, store_uri, experiment, sent):
    uri = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with Tracker(
            experiment, spool_root=tmp_path / "spool", tracking_uri=uri, log_every=3
        ) as tracker:
            tracker.log_params({"lr": 0.01, "method": "dbmtl"})
            _log_some(tracker, range(12), tmp_path)
            assert tracker.flush(wait=True, timeout=30) is False  # the store has nothing
            _log_some(tracker, range(12, 20), tmp_path)
            (tmp_path / "table.csv").write_text("a,b\n1,2\n")
            tracker.log_artifact(tmp_path / "table.csv")
    assert time.monotonic() - started < 15  # no minutes of HTTP retries
    messages = _tracking_warnings(record)
    assert len(messages) == 1, messages
    assert uri in messages[0] and "unreachable" in messages[0]
    assert "mtltrain.tracking.sync(" in messages[0] and str(tracker.spool_dir) in messages[0]
    assert isinstance(tracker.sink_error, ConnectionError)
    assert tracker.mlflow_run_id is None

    # the spool holds every record, and sync puts all of them in a store
    recorded = spool_metrics(tracker.spool_dir)
    assert recorded["train/loss/a"] == [(s, s / 7.0) for s in range(20)]
    assert recorded["val/acc"] == [(k, (5 * k + 4) / 100.0) for k in range(4)]
    client = _client(store_uri)
    (run_id,) = sync(tracker.spool_dir, store_uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert_store_has_spool(client, run_id, tracker.spool_dir)
    assert sent["metrics"] == sum(len(v) for v in recorded.values()) == 2 * 20 + 4
    # a second sync uploads nothing twice
    assert sync(tmp_path / "spool", store_uri) == [run_id]
    assert sent["metrics"] == 2 * 20 + 4
    assert len(client.get_metric_history(run_id, "train/loss/a")) == 20


def test_store_failing_mid_run_gets_the_remainder_on_sync(tmp_path, experiment, sent):
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    client = _client(uri)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        tracker = Tracker(
            experiment,
            spool_root=tmp_path / "spool",
            tracking_uri=uri,
            log_every=4,
            upload_interval=0,
        )
        tracker.log_params({"seed": 1})
        _log_some(tracker, range(10), tmp_path)
        assert tracker.flush(wait=True, timeout=60) is True  # the first part is in the store
        run_id = tracker.mlflow_run_id
        assert history(client, run_id, "train/loss/a") == [(s, s / 7.0) for s in range(10)]

        healthy = db.read_bytes()
        with open(db, "r+b") as f:  # the database becomes unusable mid-run
            f.write(b"not a database" * 300)
        _log_some(tracker, range(10, 15), tmp_path)
        assert tracker.flush(wait=True, timeout=60) is False
        with open(db, "r+b") as f:  # ... and is repaired later; the run goes on, spool only
            f.write(healthy)
        _log_some(tracker, range(15, 25), tmp_path)
        tracker.close()
    messages = _tracking_warnings(record)
    assert len(messages) == 1 and "file is not a database" in messages[0], messages
    assert history(client, run_id, "train/loss/a") == [(s, s / 7.0) for s in range(10)]
    assert client.get_run(run_id).info.status == "RUNNING"

    uploaded = sent["metrics"]
    assert uploaded == 2 * 10 + 2  # 10 steps x 2 keys + val/acc at steps 4, 9
    assert sync(tracker.spool_dir, uri) == [run_id]  # the same MLflow run, completed
    assert sent["metrics"] - uploaded == 2 * 15 + 3  # the remainder only
    assert history(client, run_id, "train/loss/a") == [(s, s / 7.0) for s in range(25)]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert_store_has_spool(client, run_id, tracker.spool_dir)
    state = json.loads((tracker.spool_dir / "synced.json").read_text())["stores"][uri]
    assert state["metrics_lines"] == len(RunSpool.open(tracker.spool_dir).read_metrics())
    calls = sent["calls"]
    assert sync(tracker.spool_dir, uri) == [run_id]
    assert sent["calls"] == calls  # a second sync sends nothing
    assert len(client.get_metric_history(run_id, "train/lr")) == 25


@pytest.mark.slow
def test_tracking_server_going_down_mid_run(tmp_path, store_uri, experiment, serve):
    pytest.importorskip("mlflow")
    server, port = serve(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", "0",
            "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "server-artifacts"),
        ],
        cwd=tmp_path,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            tracker = Tracker(
                experiment,
                spool_root=tmp_path / "spool",
                tracking_uri=uri,
                log_every=2,
                upload_interval=0,
            )
            tracker.log_params({"lr": 0.5})
            tracker.log_text("hello", "notes/hello.txt")
            _log_some(tracker, range(6), tmp_path)
            assert tracker.flush(wait=True, timeout=60) is True
            client = _client(uri)
            run_id = tracker.mlflow_run_id
            assert history(client, run_id, "train/loss/a") == [(s, s / 7.0) for s in range(6)]
            assert artifact_files(client, run_id) == ["notes/hello.txt"]

            os.killpg(server.pid, signal.SIGKILL)  # the server goes down mid-run
            server.wait(30)
            _log_some(tracker, range(6, 14), tmp_path)
            assert tracker.flush(wait=True, timeout=60) is False
            _log_some(tracker, range(14, 16), tmp_path)
            tracker.close()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)
    messages = _tracking_warnings(record)
    assert len(messages) == 1 and uri in messages[0], messages
    # nothing lost: everything reaches another store
    (other_id,) = sync(tracker.spool_dir, store_uri)
    assert_store_has_spool(_client(store_uri), other_id, tracker.spool_dir)
    assert len(spool_metrics(tracker.spool_dir)["train/loss/a"]) == 16


# ------------------------------------------------------------------------------------------
# a killed process; no MLflow installed
# ------------------------------------------------------------------------------------------
_KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import mtltrain
    from mtltrain.tracking import Tracker

    leaked = [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]
    assert not leaked, f"importing mtltrain imported {leaked}"
    sys.modules["mlflow"] = None  # as on a machine without MLflow
    t = Tracker("killed-run", spool_root=sys.argv[1], log_every=5)
    t.log_params({"seed": 3})
    for step in range(12):
        t.log_step({"train/loss": torch.tensor(step / 4.0)}, step)
    t.log_metrics({"val/loss": 0.5}, step=0)
    t.log_text("partial", "notes.txt")
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_killed_run_syncs_as_killed(tmp_path, store_uri):
    spool_root = tmp_path / "spool"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(spool_root)], capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (run_dir,) = [p for p in spool_root.iterdir() if p.is_dir()]
    meta = RunSpool.open(run_dir).meta
    assert meta["status"] == "RUNNING" and process_alive(meta) is False
    # the kill cut a write in half: readers stop before the incomplete line
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"key": "train/loss", "val')
    # flushed every 5 steps: steps 10 and 11 were still in the device buffer
    assert spool_metrics(run_dir) == {
        "train/loss": [(s, s / 4.0) for s in range(10)],
        "val/loss": [(0, 0.5)],
    }

    with pytest.warns(RuntimeWarning, match="incomplete line"):
        (run_id,) = sync(spool_root, store_uri)
    client = _client(store_uri)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert meta["start_time"] <= run.info.end_time <= time.time() * 1000
    assert run.data.params == {"seed": "3"}
    assert_store_has_spool(client, run_id, run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the cut line is reported once
        assert sync(spool_root, store_uri, running_status="FAILED") == [run_id]
    assert client.get_run(run_id).info.status == "FAILED"
    assert len(client.get_metric_history(run_id, "train/loss")) == 10


def test_without_mlflow_the_tracker_warns_and_spools(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        with Tracker("no-mlflow", spool_root=tmp_path / "spool", tracking_uri=uri) as t:
            t.log_params({"a": 1})
            _log_some(t, range(7), tmp_path)
    messages = _tracking_warnings(record)
    assert len(messages) == 1 and "pip install 'mtltrain[mlflow]'" in messages[0], messages
    assert isinstance(t.sink_error, ImportError)
    assert RunSpool.open(t.spool_dir).read_params() == {"a": "1"}
    assert spool_metrics(t.spool_dir)["train/loss/a"] == [(s, s / 7.0) for s in range(7)]
    with pytest.raises(ImportError, match="pip install"):
        sync(tmp_path / "spool", uri)
    assert not (tmp_path / "mlflow.db").exists()


# ------------------------------------------------------------------------------------------
# buffered step values: same records, one host copy every log_every steps
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("log_every", [1, 4])
def test_step_buffer_equals_one_by_one_with_one_transfer_per_log_every(tmp_path, log_every):
    g = torch.Generator().manual_seed(log_every)
    n_steps, step_stride = 11, 10
    steps = [i * step_stride for i in range(n_steps)]
    values = {
        "loss/f64": torch.rand(n_steps, dtype=torch.float64, generator=g) / 3,
        "loss/f32": torch.rand(n_steps, generator=g),
        "loss/bf16": torch.rand(n_steps, generator=g).to(torch.bfloat16),
        "count": torch.arange(n_steps) * 3,
    }
    buffered = Tracker("buf", spool_root=tmp_path / "a", log_every=log_every)
    direct = Tracker("buf", spool_root=tmp_path / "b")
    HostReads.count = 0
    for i, step in enumerate(steps):
        row = {k: v[i].clone().as_subclass(HostReads) for k, v in values.items()}
        buffered.log_step({**row, "lr": 0.5**i}, step)
        # a host copy only when log_every steps are buffered and a new step arrives
        assert HostReads.count == i // log_every, (i, HostReads.count)
        assert (
            len(RunSpool.open(buffered.spool_dir).read_metrics())
            == 5 * (i // log_every) * log_every
        )
        direct.log_metrics({**{k: v[i].item() for k, v in values.items()}, "lr": 0.5**i}, step)
    buffered.close()
    direct.close()
    assert HostReads.count == math.ceil(n_steps / log_every)
    assert spool_metrics(buffered.spool_dir) == spool_metrics(direct.spool_dir)
    assert spool_metrics(buffered.spool_dir)["loss/f64"] == [
        (s, values["loss/f64"][i].item()) for i, s in enumerate(steps)
    ]


def test_balance_stats_are_buffered_without_host_reads(tmp_path):
    encoder, heads, losses = _tiny_problem(1)
    balancer = mtlbalance.DBMTL(encoder, dict(heads))
    tracker = Tracker("stats", spool_root=tmp_path, log_every=3)
    expected: dict[str, list[tuple[int, float]]] = {}
    HostReads.count = 0
    for step in range(3):
        stats = balancer.backward(losses())
        counted = type(stats)(
            **{
                f: getattr(stats, f).as_subclass(HostReads)
                if isinstance(getattr(stats, f), torch.Tensor)
                else getattr(stats, f)
                for f in stats.__dataclass_fields__
            }
        )
        tracker.log_balance_stats(counted, step, prefix="tr/")
        for k, v in stats.to_dict().items():
            expected.setdefault(f"tr/{k}", []).append((step, v))
    assert HostReads.count == 0 and RunSpool.open(tracker.spool_dir).read_metrics() == []
    tracker.close()
    assert HostReads.count == 1  # all three steps, all tasks: one copy
    assert spool_metrics(tracker.spool_dir) == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_steps_between_flushes_never_sync(tmp_path):
    device = torch.device("cuda")
    tracker = Tracker("cuda", spool_root=tmp_path, log_every=5)
    losses = torch.linspace(0.0, 1.0, 12, device=device, dtype=torch.float64)
    for step in range(12):
        flush_due = step > 0 and step % 5 == 0
        torch.cuda.set_sync_debug_mode("warn" if flush_due else "error")
        try:
            tracker.log_step({"loss": losses[step] * 2, "lr": 0.1}, step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    tracker.close()
    expected = (losses * 2).cpu().tolist()
    assert spool_metrics(tracker.spool_dir)["loss"] == list(enumerate(expected))


# ------------------------------------------------------------------------------------------
# statuses and bad input
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("error", "status"), [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")]
)
def test_context_manager_status_and_final_flush(tmp_path, error, status):
    with pytest.raises(error), Tracker("ctx", spool_root=tmp_path, log_every=100) as t:
        t.log_step({"loss": torch.tensor(1.5)}, 0)
        raise error("boom")
    spool = RunSpool.open(t.spool_dir)
    assert spool.status == status and spool.meta["end_time"] >= spool.meta["start_time"]
    assert spool_metrics(t.spool_dir) == {"loss": [(0, 1.5)]}  # the buffer was flushed
    with pytest.raises(RuntimeError, match="closed"):
        t.log_metrics({"x": 1.0})


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda t: t.log_metrics({"loss@ctr": 1.0}),
            ValueError,
            r"'loss@ctr' contains '@'.*rename",
        ),
        (lambda t: t.log_step({"a//b": 1.0}, 0), ValueError, r"'a//b' is not a clean path"),
        (lambda t: t.log_metrics({"": 1.0}), ValueError, "empty metric key"),
        (lambda t: t.log_metrics({"x" * 251: 1.0}), ValueError, "at most 250"),
        (
            lambda t: t.log_params({"lr": 0.2}),
            ValueError,
            r"param 'lr' was already logged as '0.1'",
        ),
        (lambda t: t.log_params({"bad key!": 1}), ValueError, r"param key 'bad key!' contains '!'"),
        (lambda t: t.log_params({"big": "x" * 6001}), ValueError, "as an artifact"),
        (lambda t: t.log_params({"o": {"p": 1}, "o.p": 2}), ValueError, r"'o\.p' twice"),
        (lambda t: t.set_tags({"t#": "v"}), ValueError, r"tag key 't#'"),
        (lambda t: t.log_step({"x": 1.0}, 1.5), TypeError, "step must be an int"),
        (lambda t: t.log_step({"x": 1.0}, torch.tensor(1)), TypeError, "would sync"),
        (
            lambda t: t.log_step({"x": torch.ones(2)}, 0),
            ValueError,
            r"'x' is a tensor of shape \(2,\)",
        ),
        (lambda t: t.log_step({"x": "1.0"}, 0), TypeError, r"'x' must be a float"),
        (lambda t: t.log_artifact("/no/such/file"), FileNotFoundError, "/no/such/file"),
        (lambda t: t.log_text("x", "../escape.txt"), ValueError, "relative path inside"),
        (lambda t: t.log_dict({}, "config.yaml"), ValueError, r"end in '\.json'"),
        (lambda t: t.log_balance_stats({"loss": 1}, 0), TypeError, "BalanceStats"),
        (lambda t: t.close("DONE"), ValueError, "FINISHED, FAILED, KILLED"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(tmp_path, call, error, match):
    t = Tracker("bad", spool_root=tmp_path)
    t.log_params({"lr": 0.1})
    before = {p.name: p.read_bytes() for p in t.spool_dir.iterdir() if p.is_file()}
    with pytest.raises(error, match=match):
        call(t)
    after = {p.name: p.read_bytes() for p in t.spool_dir.iterdir() if p.is_file()}
    assert after == before  # nothing half-written
    t.log_params({"lr": 0.1})  # the same value again is fine
    t.close()


def test_bad_task_name_in_balance_stats_names_the_key(tmp_path):
    stats = mtlbalance.BalanceStats(
        ("ctr", "watch time?"), torch.ones(2), torch.zeros(2), None, None, None, None
    )
    with pytest.raises(
        ValueError, match=r"'train/loss/watch time\?' contains '\?'.*rename the task"
    ):
        Tracker("bad", spool_root=tmp_path).log_balance_stats(stats, 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"log_every": 0}, ValueError, "log_every must be a positive int"),
        ({"tracking_uri": " "}, ValueError, "tracking_uri is empty"),
        ({"experiment": ""}, ValueError, "experiment must be a non-empty name"),
        ({"tags": {"a b/": 1}}, ValueError, "not a clean path"),
        ({"close_timeout": -1}, ValueError, "close_timeout must be"),
    ],
)
def test_bad_tracker_options(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        Tracker(**{"experiment": "opts", "spool_root": tmp_path, **kwargs})
    assert list(tmp_path.iterdir()) == []  # no run was started


def test_sync_rejects_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"spool root .* does not exist"):
        sync(tmp_path / "missing", "sqlite:///x.db")
    with pytest.raises(ValueError, match="running_status must be one of"):
        sync(tmp_path, "sqlite:///x.db", running_status="DONE")
    assert validate_key("train/loss/ctr: v2") == "train/loss/ctr: v2"
