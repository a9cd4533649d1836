"""`mtlbench run` / `report` as an MLflow user sees them, in a real MLflow SQLite store: the
experiment described and tagged as model training with a runs view showing Δp and the test
metrics; each method's seeds under a group run holding their mean; the report as a run whose
description links every row and seed to its run; where each run came from; MLflow's system
metrics; the same after a store that was down, or no store at all, is synced later."""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from mtlbench.cli import main
from mtlbench.publish import benchmark_links

from .conftest import spec_folder

SPEC = """
name = "tiny"
description = "a tiny synthetic spec for the tests"
problem = "mtlbench.problems.synthetic:build"
methods = ["ew", "dbmtl"]

[data]
n_train = 256
n_val = 128
n_test = 128
seed = 3

[model]
hidden = 8
layers = 1

[train]
epochs = 2
batch_size = 64
lr = 3e-3

[tasks.click]
auc = "higher"

[tasks.rating]
mae = "lower"

[tasks.price]
mae = "lower"
"""
TASKS = {"click": "auc", "rating": "mae", "price": "mae"}
SECRET = "http://alice:hunter2@example.invalid:5000"


@pytest.fixture
def specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return spec_folder(tmp_path, monkeypatch, SPEC)


def _run_page(exp_id: str, run_id: str) -> str:
    return f"#/experiments/{exp_id}/runs/{run_id}?workflowType=machine_learning"


def _views(exp) -> dict[str, dict]:
    prefix = "mlflow.sharedViewState."
    return {k[len(prefix) :]: json.loads(v) for k, v in exp.tags.items() if k.startswith(prefix)}


def test_a_run_as_an_mlflow_user_sees_it(
    specs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    # the command line every run records: the one that started the process, secrets redacted
    argv = ["mtlbench", "run", "tiny", "--stl", "--seeds", "2", "--tracking-uri", SECRET]
    monkeypatch.setattr(sys, "argv", argv)
    assert main(["run", "tiny", "--stl", "--seeds", "2", "--tracking-uri", uri, "--quiet"]) == 0
    out = capsys.readouterr().out
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("mtlbench/tiny")
    exp_id = exp.experiment_id

    # The experiment: model training, described, with a runs view of Δp and the test metrics.
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.tags["mlflow.note.content"].startswith(
        "**tiny**: a tiny synthetic spec for the tests"
    )
    ((key, view),) = _views(exp).items()
    columns = [
        "metrics.`final.test.delta_p`",
        "metrics.`final.test.delta_p_std`",
        "metrics.`final.test.click.auc`",
        "metrics.`final.test.rating.mae`",
        "metrics.`final.test.price.mae`",
    ]  # the UI's names for metric columns (checked in a browser)
    assert view == {
        "selectedColumns": columns,
        "columnOrder": columns,
        "columnWidths": dict.fromkeys(columns, 160),
    }
    table = f"#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey={key}"
    assert f"runs, Δp and test metrics: http://127.0.0.1:5000/{table}" in out
    assert benchmark_links(uri, 5077, None) == [("mtlbench/tiny", f"http://127.0.0.1:5077/{table}")]

    # Seeds under a group run per method, which holds their mean (and Δp's std).
    runs = client.search_runs([exp_id], max_results=100)
    by_name = {r.info.run_name: r for r in runs}
    assert len(runs) == 3 * 2 + 2 * 2 + 3 + 1  # STL, ew, dbmtl runs; 3 groups; the report
    for method in ("stl", "ew", "dbmtl"):
        group = by_name[method]
        assert group.data.tags["mtlbench.kind"] == "group"
        kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == group.info.run_id]
        assert len(kids) == (6 if method == "stl" else 2)
        for task, metric in TASKS.items():
            key_ = f"final.test.{task}.{metric}"
            values = [r.data.metrics[key_] for r in kids if key_ in r.data.metrics]
            assert len(values) == 2
            assert group.data.metrics[key_] == pytest.approx(statistics.fmean(values), rel=1e-12)
        if method != "stl":
            dps = [r.data.metrics["final.test.delta_p"] for r in kids]
            assert group.data.metrics["final.test.delta_p"] == pytest.approx(statistics.fmean(dps))
            assert group.data.metrics["final.test.delta_p_std"] == pytest.approx(
                statistics.stdev(dps)
            )
            assert group.data.metrics["final.seeds"] == 2.0

    # The report: its files, and a description whose rows and seeds link to their runs.
    report = by_name["report"]
    files = {a.path for a in client.list_artifacts(report.info.run_id)}
    assert files == {"report.md", "report.png", "report.json"}
    note = report.data.tags["mlflow.note.content"]
    assert note.startswith("# tiny: results and Δp")
    for r in runs:
        if r is not report:
            assert f"]({_run_page(exp_id, r.info.run_id)})" in note, r.info.run_name
    link = f"http://127.0.0.1:5000/{_run_page(exp_id, report.info.run_id)}"
    assert f"this report:               {link}" in out

    # Where a run came from.
    run = by_name["dbmtl-seed0"]
    tags = run.data.tags
    assert (
        tags["mtltrain.command"]
        == tags["mlflow.source.name"]
        == (
            "mtlbench run tiny --stl --seeds 2 --tracking-uri "
            "'http://alice:***@example.invalid:5000'"
        )
    )
    repo = Path(__file__).resolve().parents[2]
    git = ["git", "-C", str(repo), "rev-parse", "HEAD"]
    head = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    if head:
        assert tags["mlflow.source.git.commit"] == head
    import torch

    assert tags["versions.torch"] == torch.__version__
    assert "versions.mtlbench" in tags and "versions.python" in tags
    for r in runs:  # the password is nowhere in the store
        assert "hunter2" not in json.dumps([r.data.tags, r.data.params])
    downloaded = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl")))
    assert (downloaded / "spec" / "tiny.toml").read_text() == SPEC
    environment = json.loads((downloaded / "environment.json").read_text())
    assert environment["versions"]["torch"] == torch.__version__
    assert "hunter2" not in json.dumps(environment)

    # MLflow's system metrics, and the run page's order: single values have no '/' in their
    # name, so MLflow puts them in its last chart section, after the per-task curves.
    try:
        import psutil  # noqa: F401
    except ImportError:
        pass
    else:
        assert "system/cpu_utilization_percentage" in run.data.metrics
    finals = [k for k in run.data.metrics if k.startswith("final")]
    assert finals and all("/" not in k for k in finals)
    assert "train/loss/price" in run.data.metrics and "test/price/mae" in run.data.metrics

    # `mtlbench report` logs a report run too.
    assert main(["report", "tiny", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    reports = client.search_runs([exp_id], filter_string="tags.`mtlbench.kind` = 'report'")
    assert len(reports) == 2
    newest = max(reports, key=lambda r: r.info.start_time)
    link = f"http://127.0.0.1:5000/{_run_page(exp_id, newest.info.run_id)}"
    assert f"this report:               {link}" in out


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("store", ["none", "down"])
def test_runs_synced_later_get_the_same_groups_links_and_view(
    specs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], store: str
) -> None:
    mlflow = pytest.importorskip("mlflow")
    if store == "none":
        options = ["--no-tracking"]
    else:
        options = ["--tracking-uri", f"http://127.0.0.1:{_closed_port()}", "--store-timeout", "2"]
    with (
        pytest.warns((UserWarning, RuntimeWarning)) if store == "down" else contextlib.nullcontext()
    ):
        assert main(["run", "tiny", "--methods", "dbmtl", "--seeds", "2", "--quiet", *options]) == 0
    out = capsys.readouterr().out
    if store == "none":
        assert "(no MLflow store): `mtlbench sync` uploads it, `mtlbench ui` shows it" in out
    else:
        assert "did not get the runs yet; the spool mtlruns-spool has them: `mtlbench sync" in out

    uri = f"sqlite:///{tmp_path / 'later.db'}"
    assert main(["sync", "mtlruns-spool", "--tracking-uri", uri]) == 0
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("mtlbench/tiny")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert len(_views(exp)) == 1
    runs = client.search_runs([exp.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    group = by_name["dbmtl"]
    for seed in (0, 1):
        run = by_name[f"dbmtl-seed{seed}"]
        assert run.data.tags["mlflow.parentRunId"] == group.info.run_id
    note = by_name["report"].data.tags["mlflow.note.content"]
    for name in ("dbmtl", "dbmtl-seed0", "dbmtl-seed1"):
        assert f"]({_run_page(exp.experiment_id, by_name[name].info.run_id)})" in note


def test_links_to_a_tracking_server_carry_no_credentials() -> None:
    from mtlbench.publish import ui_base

    assert ui_base("https://alice:hunter2@mlflow.example.com:8443/team/?token=hunter2") == (
        "https://mlflow.example.com:8443/team/",
        False,  # the server serves its own UI; the browser asks for the login
    )
    assert ui_base("sqlite:////data/mlflow.db", 5001) == ("http://127.0.0.1:5001/", True)
