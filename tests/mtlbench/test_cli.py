"""The mtlbench command line end to end on a tiny spec: run (STL + methods, tracked in a real
MLflow SQLite store), report, an unreachable store and a later sync, bad specs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from mtlbench.cli import main
from mtlbench.spec import find_spec, load_spec
from mtltrain.deltap import delta_p
from mtltrain.tracking import TrackingWarning

from .conftest import TINY


def test_help_of_every_command() -> None:
    """Every command's help names the command and the options it takes."""
    expected = {
        (): ["list", "run", "report", "ui", "sync", "--specs"],
        ("run",): ["--methods", "--seeds", "--seed-list", "--stl", "--epochs", "--device",
                   "--out", "--resume", "--restart", "--quiet", "--no-tracking",
                   "--tracking-uri", "--spool", "--store-timeout"],
        ("report",): ["--out", "--from-spool", "--tracking-uri", "--spool"],
        ("list",): [],
        ("ui",): ["--port", "--tracking-uri"],
        ("sync",): ["--tracking-uri", "path"],
    }  # fmt: skip
    for args, options in expected.items():
        out = subprocess.run(
            [sys.executable, "-m", "mtlbench.cli", *args, "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out.startswith(f"usage: mtlbench {' '.join(args)}".rstrip()), out
        missing = [o for o in options if o not in out]
        assert not missing, (args, missing)


def test_list(specs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "tiny: a tiny synthetic spec" in out and "click (auc)" in out


def test_run_then_report_reads_back_from_mlflow(
    specs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    assert main(["run", "tiny", "--stl", "--seeds", "2", "--tracking-uri", uri, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| ew |" in out and "| dbmtl |" in out and "our STL runs (2 seeds)" in out

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("mtlbench/tiny")
    every = client.search_runs([exp.experiment_id])
    runs = [r for r in every if "mtlbench.kind" not in r.data.tags]  # the training runs
    assert len(runs) == 2 * (3 + 2)  # 2 seeds x (3 STL tasks + ew + dbmtl)
    kinds = sorted(r.data.tags.get("mtlbench.kind", "") for r in every if r not in runs)
    assert kinds == ["group"] * 3 + ["report"]  # a group run for stl, ew, dbmtl; the report
    assert {r.info.status for r in runs} == {"FINISHED"}
    dbmtl = next(
        r
        for r in runs
        if r.data.tags["mtlbench.method"] == "dbmtl" and r.data.tags["mtlbench.seed"] == "1"
    )
    assert dbmtl.data.params["method"] == "dbmtl"
    assert dbmtl.data.params["spec.train.epochs"] == "2"
    assert dbmtl.data.params["seed"] == "1" and dbmtl.data.params["reference"] == "stl"
    assert dbmtl.data.tags["mtlbench.selection"] == "stl"
    metrics = dbmtl.data.metrics
    for key in (
        "final.test.click.auc",
        "final.test.rating.mae",
        "final.test.price.mae",
        "final.val.price.mae",
        "final.epoch",
        "final.test.delta_p",
        "val/delta_p",
    ):
        assert key in metrics, key
    history = client.get_metric_history(dbmtl.info.run_id, "train/loss/price")
    assert len(history) == 2 * 8  # every optimizer step: 512 / 64 = 8 per epoch
    weights = client.get_metric_history(dbmtl.info.run_id, "train/grad_norm/click")
    assert len(weights) == 16
    artifacts = {a.path for a in client.list_artifacts(dbmtl.info.run_id)}
    assert {"config.json", "results.md", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(dbmtl.info.run_id, "plots")}
    assert {"plots/train_loss.png", "plots/train_grad_norm.png"} <= plots
    stl_click = [r for r in runs if r.data.tags.get("mtlbench.stl_task") == "click"]
    assert len(stl_click) == 2 and all(
        "final.test.rating.mae" not in r.data.metrics for r in stl_click
    )

    out_dir = tmp_path / "rep"
    assert main(["report", "tiny", "--tracking-uri", uri, "--out", str(out_dir)]) == 0
    data = json.loads((out_dir / "report.json").read_text())
    assert (out_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "made-up numbers" in (out_dir / "report.md").read_text()
    # Δp of dbmtl's seed-1 run, recomputed from the store against the mean STL test metrics
    spec = find_spec("tiny")

    def final(run: object, task: str, metric: str) -> float:
        return float(run.data.metrics[f"final.test.{task}.{metric}"])  # type: ignore[attr-defined]

    stl_ref = {
        t: {
            m: sum(final(r, t, m) for r in runs if r.data.tags.get("mtlbench.stl_task") == t) / 2
            for m in ms
        }
        for t, ms in spec.tasks.items()
    }
    ours = {t: {m: final(dbmtl, t, m) for m in ms} for t, ms in spec.tasks.items()}
    expected = delta_p(ours, stl_ref, spec.tasks)
    assert metrics["final.test.delta_p"] == pytest.approx(expected, rel=1e-9)
    assert data["ours"]["dbmtl"]["delta_p_per_seed"]["1"] == pytest.approx(expected, rel=1e-9)
    for task, ms in stl_ref.items():
        assert data["reference"]["values"][task] == pytest.approx(ms)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_store_loses_nothing_and_sync_uploads_later(
    specs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mlflow = pytest.importorskip("mlflow")
    down = f"http://127.0.0.1:{_closed_port()}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["run", "tiny", "--methods", "dbmtl", "--tracking-uri", down, "--quiet"])
    assert code == 0
    assert any(issubclass(w.category, TrackingWarning) for w in caught)
    capsys.readouterr()
    uri = f"sqlite:///{tmp_path / 'later.db'}"
    assert main(["sync", "mtlruns-spool", "--tracking-uri", uri]) == 0
    client = mlflow.MlflowClient(uri)
    every = client.search_runs([client.get_experiment_by_name("mtlbench/tiny").experiment_id])
    runs = [r for r in every if "mtlbench.kind" not in r.data.tags]  # the training runs
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "final.test.click.auc" in runs[0].data.metrics
    assert len(client.get_metric_history(runs[0].info.run_id, "train/loss/click")) == 16
    # no STL runs and no published STL row: the report says there is no Δp reference
    assert main(["report", "tiny", "--tracking-uri", uri]) == 0
    assert "none" in capsys.readouterr().out.lower()


def test_bad_specs_are_named(specs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = specs / "bad.toml"
    bad.write_text(TINY.replace('auc = "higher"', 'auc = "up"'))
    with pytest.raises(ValueError, match=r"bad\.toml.*tasks\.click\.auc"):
        load_spec(bad)
    bad.write_text(TINY.replace("[train]", "[train]\nepoch = 3"))
    with pytest.raises(ValueError, match=r"unknown \[train\] keys \['epoch'\]"):
        load_spec(bad)
    bad.write_text(
        TINY.replace('mae = "lower"\n\n[tasks.price]', 'rmse = "lower"\n\n[tasks.price]')
    )
    assert main(["run", str(bad), "--no-tracking", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "make [tasks]" in err and "rmse" in err
    assert main(["run", "nope"]) == 2
    assert "known specs" in capsys.readouterr().err


def test_ui_serves_the_store_on_loopback(tmp_path: Path, serve) -> None:  # type: ignore[no-untyped-def]
    """`mtlbench ui` starts the real MLflow UI on 127.0.0.1 for the given store."""
    pytest.importorskip("mlflow")
    import urllib.request

    port = _closed_port()
    uri = f"sqlite:///{tmp_path / 'ui.db'}"
    _, listening = serve(
        [sys.executable, "-m", "mtlbench.cli", "ui", "--tracking-uri", uri, "--port", str(port)]
    )
    assert listening == port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=60) as r:
        assert r.read().strip() == b"OK"


def test_selection_and_report_use_the_same_stl_reference(
    specs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """STL trained twice (the second, shorter set supersedes the first), then a method that
    takes its reference from those earlier runs: the run's own final.test.delta_p (against
    the reference the runner chose) equals the report's Δp for it (against the report's)."""
    common = ["--no-tracking", "--quiet"]
    assert main(["run", "tiny", "--stl", "--methods", *common]) == 0
    assert main(["run", "tiny", "--stl", "--methods", "--restart", "--epochs", "1", *common]) == 0
    assert main(["run", "tiny", "--methods", "ew", *common]) == 0
    capsys.readouterr()
    from mtlbench.report import build_report, collect_runs
    from mtltrain.tracking import RunSpool

    spec = find_spec("tiny")
    report = build_report(spec, collect_runs(spec, spool_root="mtlruns-spool"))
    assert report.superseded == 3  # the first STL set
    (ew_id,) = report.ours["ew"].run_ids
    logged = {
        r.key: r.value
        for r in RunSpool.open(Path("mtlruns-spool") / ew_id).read_metrics()
        if r.key == "final.test.delta_p"
    }
    tags = RunSpool.open(Path("mtlruns-spool") / ew_id).meta["tags"]
    assert tags["mtlbench.selection"] == "stl"  # the earlier STL runs were reused
    assert logged["final.test.delta_p"] == pytest.approx(
        report.ours["ew"].delta_p_per_seed[0], rel=1e-12
    )
    # and the reference is the newer STL set's metrics, not a mean with the superseded one
    newest = {t: runs[-1].test[t] for t, runs in _stl_by_task(report, spec).items()}
    assert report.reference == newest


def _stl_by_task(report, spec):
    from mtlbench.report import collect_runs

    runs = [r for r in collect_runs(spec, spool_root="mtlruns-spool") if r.method == "stl"]
    by_task: dict[str, list] = {}
    for r in sorted(runs, key=lambda r: r.start_time):
        by_task.setdefault(r.stl_task, []).append(r)
    return by_task


def test_the_command_line_starts_without_torch() -> None:
    """`mtlbench --help` answers at once: importing the CLI imports neither torch nor mlflow
    (they load when a command needs them)."""
    code = "import sys, mtlbench.cli; print(sorted({'torch', 'mlflow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    help_out = subprocess.run(
        [sys.executable, "-m", "mtlbench.cli", "--help"], capture_output=True, text=True
    )
    assert help_out.returncode == 0 and "run" in help_out.stdout and "report" in help_out.stdout


def test_no_library_chatter_on_the_terminal(specs: Path, tmp_path: Path) -> None:
    """A run that creates a new MLflow store prints no MLflow INFO lines (they used to land in
    the middle of the progress bar), and torch.fx's notice to library authors is dropped."""
    import logging

    proc = subprocess.run(
        [sys.executable, "-m", "mtlbench.cli", "run", "tiny", "--methods", "ew", "--quiet"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MTLBENCH_SPECS": str(specs)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "mlflow.db").is_file()  # a new store was created
    assert "INFO mlflow" not in proc.stderr, proc.stderr

    from torch.fx import _symbolic_trace

    from mtlbench.cli import _quiet_libraries

    _quiet_libraries()
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("torch.fx._symbolic_trace")
    handler = Keep()
    logger.addHandler(handler)
    try:
        _symbolic_trace.is_fx_tracing_warning.cache_clear()
        _symbolic_trace.is_fx_tracing_warning()
        logger.warning("another torch.fx warning")
    finally:
        logger.removeHandler(handler)
    assert seen == ["another torch.fx warning"]


def _final_test(run_dir: Path) -> dict[str, float]:
    from mtltrain.tracking import RunSpool

    return {
        r.key: r.value
        for r in RunSpool.open(run_dir).read_metrics()
        if r.key.startswith("final.test.")
    }


def _only_run(spool: Path) -> Path:
    """The one training run in ``spool`` (besides mtlbench's group and report runs)."""
    from mtltrain.tracking import RunSpool

    (run,) = [
        p
        for p in spool.iterdir()
        if (p / "meta.json").is_file() and "mtlbench.kind" not in RunSpool.open(p).meta["tags"]
    ]
    return run


def test_resume_continues_the_run(specs: Path, tmp_path: Path) -> None:
    """One epoch, then --resume with two: the same tracked run goes on (every step once) and
    ends exactly where an uninterrupted two-epoch run ends."""
    from mtltrain.tracking import RunSpool

    common = ["run", "tiny", "--methods", "ew", "--no-tracking", "--quiet"]
    assert main([*common, "--epochs", "2", "--spool", "ref", "--out", "ref-out"]) == 0
    assert main([*common, "--epochs", "1"]) == 0
    assert main([*common, "--epochs", "2", "--resume"]) == 0
    run = _only_run(Path("mtlruns-spool"))
    steps = [r.step for r in RunSpool.open(run).read_metrics() if r.key == "train/loss/click"]
    assert sorted(steps) == list(range(16))  # 512 / 64 = 8 steps per epoch, none twice
    assert _final_test(run) == _final_test(_only_run(Path("ref")))


def test_method_options_and_scheduler_reach_the_run(specs: Path) -> None:
    """[method_options] change the balancer (DB-MTL without its EMA trains differently) and
    [train] scheduler changes the learning rate the optimizer used; each alone."""
    from mtltrain.tracking import RunSpool

    common = ["run", "tiny", "--methods", "dbmtl", "--no-tracking", "--quiet"]
    variants = {
        "plain": TINY,
        "options": TINY + "\n[method_options.dbmtl]\nbeta = 0.0\n",
        "scheduler": TINY.replace(
            "lr = 3e-3", 'lr = 3e-3\nscheduler = {type = "step", step_size = 1, gamma = 0.5}'
        ),
    }
    runs = {}
    for name, text in variants.items():
        (specs / "tiny.toml").write_text(text)
        assert main([*common, "--spool", name, "--out", f"{name}-out"]) == 0
        runs[name] = _only_run(Path(name))
    assert _final_test(runs["options"]) != _final_test(runs["plain"])
    for name, halved in (("scheduler", True), ("plain", False), ("options", False)):
        lr = {r.step: r.value for r in RunSpool.open(runs[name]).read_metrics()
              if r.key == "train/lr"}  # fmt: skip
        assert lr[0] == pytest.approx(3e-3)
        assert lr[8] == pytest.approx(1.5e-3 if halved else 3e-3), name  # epoch 2
