"""What an MLflow user sees of tracked runs, against a real MLflow SQLite store: parents and
links between runs (live, after the store was down, across spools), experiment tags, MLflow's
system metrics through the spool, and where a run came from (command, git, versions)."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import sys
import textwrap
import time
import urllib.parse
from pathlib import Path

import pytest

from mtltrain.tracking import RunSpool, Tracker, sync
from mtltrain.tracking.provenance import command_line, git_info, provenance_tags

from .conftest import closed_port


def _client(uri: str):
    mlflow = pytest.importorskip("mlflow")
    return mlflow.MlflowClient(uri)


def _run_page(experiment_id: str, run_id: str) -> str:
    """MLflow 3's route of a run's page, in its model-training view (checked in a browser)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def _family(spool: Path, uri: str | None, experiment: str) -> tuple[Tracker, Tracker, Tracker]:
    """A group run, one child run under it, and a 'report' run linking to both."""
    group = Tracker(experiment, spool_root=spool, tracking_uri=uri, run_name="dbmtl")
    group.log_metrics({"final.test.delta_p": -1.5})
    child = Tracker(
        experiment, spool_root=spool, tracking_uri=uri, run_name="dbmtl-seed0", parent=group.run_id
    )
    child.log_metrics({"final.test.delta_p": -1.5})
    child.close()
    group.close()
    report = Tracker(experiment, spool_root=spool, tracking_uri=uri, run_name="report")
    report.set_linked_tags(
        {
            "mlflow.note.content": f"| [dbmtl]({{{{run:{group.run_id}}}}}) | "
            f"[seed 0]({{{{run:{child.run_id}}}}}) |"
        }
    )
    report.close()
    return group, child, report


def _ids(client, experiment: str) -> dict[str, tuple[str, dict[str, str]]]:
    """run name -> (MLflow run id, tags), read from the store."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return {r.info.run_name: (r.info.run_id, dict(r.data.tags)) for r in runs}


def _assert_family(client, experiment: str) -> None:
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    ids = _ids(client, experiment)
    group_id, group_tags = ids["dbmtl"]
    child_id, child_tags = ids["dbmtl-seed0"]
    assert child_tags["mlflow.parentRunId"] == group_id  # the UI nests the seed under its group
    assert "mlflow.parentRunId" not in group_tags
    note = ids["report"][1]["mlflow.note.content"]
    assert note == (
        f"| [dbmtl]({_run_page(exp_id, group_id)}) | [seed 0]({_run_page(exp_id, child_id)}) |"
    )


def test_parents_and_links_uploaded_live(tmp_path, store_uri, experiment):
    _family(tmp_path / "spool", store_uri, experiment)
    _assert_family(_client(store_uri), experiment)


def test_parents_and_links_when_the_store_was_down_then_synced(tmp_path, store_uri, experiment):
    down = f"http://127.0.0.1:{closed_port()}"
    spool = tmp_path / "spool"
    with pytest.warns(UserWarning, match="unreachable"):
        *_, report = _family(spool, down, experiment)
    # Sync the report alone: the runs it links to, and the child's parent, come along first.
    sync(report.spool_dir, store_uri)
    _assert_family(_client(store_uri), experiment)
    # A full sync afterwards changes nothing and does not duplicate a run.
    sync(spool, store_uri)
    assert len(_ids(_client(store_uri), experiment)) == 3


def test_parents_and_links_of_a_spool_only_run_synced_child_first(tmp_path, store_uri, experiment):
    spool = tmp_path / "spool"
    _, child, _ = _family(spool, None, experiment)
    sync(child.spool_dir, store_uri)  # the parent is uploaded first, the child nested under it
    ids = _ids(_client(store_uri), experiment)
    assert ids["dbmtl-seed0"][1]["mlflow.parentRunId"] == ids["dbmtl"][0]
    sync(spool, store_uri)
    _assert_family(_client(store_uri), experiment)


def test_a_link_to_a_run_not_in_the_store_yet_searches_for_it_then_links(
    tmp_path, store_uri, experiment
):
    """The report names a run spooled on another machine: until that spool is synced, the link
    is a search for the run's spool id; a later sync of the report makes it a direct link."""
    elsewhere = Tracker(experiment, spool_root=tmp_path / "gpu-box", run_name="dbmtl-seed1")
    elsewhere.close()
    report = Tracker(experiment, spool_root=tmp_path / "here", run_name="report")
    report.set_linked_tags({"mlflow.note.content": f"[seed 1]({{{{run:{elsewhere.run_id}}}}})"})
    report.close()
    client = _client(store_uri)
    sync(report.spool_dir, store_uri)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    query = f"tags.`mtltrain.spool_run_id` = '{elsewhere.run_id}'"
    search = (
        f"#/experiments/{exp_id}/runs?workflowType=machine_learning"
        f"&searchFilter={urllib.parse.quote(query)}"
    )
    assert _ids(client, experiment)["report"][1]["mlflow.note.content"] == f"[seed 1]({search})"

    sync(tmp_path / "gpu-box", store_uri)
    sync(report.spool_dir, store_uri)
    seed1 = _ids(client, experiment)["dbmtl-seed1"][0]
    note = _ids(client, experiment)["report"][1]["mlflow.note.content"]
    assert note == f"[seed 1]({_run_page(exp_id, seed1)})"


def test_a_resumed_run_joins_the_group_that_resumed_it(tmp_path, store_uri, experiment):
    spool = tmp_path / "spool"
    first = Tracker(experiment, spool_root=spool, tracking_uri=store_uri, run_name="g1")
    run = Tracker(experiment, spool_root=spool, tracking_uri=store_uri, parent=first.run_id)
    run.close("KILLED")
    first.close("KILLED")
    second = Tracker(experiment, spool_root=spool, tracking_uri=store_uri, run_name="g2")
    resumed = Tracker(
        experiment,
        spool_root=spool,
        tracking_uri=store_uri,
        resume=run.run_id,
        parent=second.run_id,
    )
    resumed.close()
    second.close()
    tags = _client(store_uri).get_run(resumed.mlflow_run_id).data.tags
    assert tags["mlflow.parentRunId"] == second.mlflow_run_id


def test_bad_parent_and_linked_tags_are_refused(tmp_path):
    with pytest.raises(ValueError, match="is not a spooled run under"):
        Tracker("e", spool_root=tmp_path, parent="20260101-000000-deadbeef")
    with pytest.raises(ValueError, match="must be a spool run id"):
        Tracker("e", spool_root=tmp_path, parent="../elsewhere")
    t = Tracker("e", spool_root=tmp_path)
    long = "x" * 7900 + "{{run:" + t.run_id + "}}"
    with pytest.raises(ValueError, match=r"may grow to \d+ characters once its 1 link"):
        t.set_linked_tags({"mlflow.note.content": long})
    with pytest.raises(TypeError, match="must be a str"):
        t.set_linked_tags({"note": 3})  # type: ignore[dict-item]
    t.close()


# ------------------------------------------------------------------------------------------
# experiment tags
# ------------------------------------------------------------------------------------------
def test_experiment_tags_are_set_where_missing_and_edits_are_kept(tmp_path, store_uri, experiment):
    client = _client(store_uri)
    tags = {"mlflow.experimentKind": "custom_model_development", "mlflow.note.content": "first"}
    Tracker(experiment, spool_root=tmp_path, tracking_uri=store_uri, experiment_tags=tags).close()
    exp = client.get_experiment_by_name(experiment)
    assert {k: exp.tags[k] for k in tags} == tags

    client.set_experiment_tag(exp.experiment_id, "mlflow.note.content", "edited in the UI")
    later = {**tags, "mlflow.note.content": "second", "mlflow.sharedViewState.v2": "{}"}
    Tracker(experiment, spool_root=tmp_path, tracking_uri=store_uri, experiment_tags=later).close()
    exp = client.get_experiment(exp.experiment_id)
    assert exp.tags["mlflow.note.content"] == "edited in the UI"  # the user's edit stays
    assert exp.tags["mlflow.sharedViewState.v2"] == "{}"  # a new tag is added


# ------------------------------------------------------------------------------------------
# system metrics
# ------------------------------------------------------------------------------------------
SYSTEM_KEYS = {
    "system/cpu_utilization_percentage",
    "system/system_memory_usage_megabytes",
    "system/system_memory_usage_percentage",
    "system/disk_usage_percentage",
    "system/disk_usage_megabytes",
    "system/disk_available_megabytes",
    "system/network_receive_megabytes",
    "system/network_transmit_megabytes",
}  # MLflow's names (mlflow/system_metrics/metrics/*.py): its System metrics tab shows these


def test_system_metrics_go_through_the_spool_to_the_store(tmp_path, store_uri, experiment):
    psutil = pytest.importorskip("psutil")
    tracker = Tracker(
        experiment,
        spool_root=tmp_path,
        tracking_uri=store_uri,
        system_metrics=True,
        system_metrics_interval=0.2,
    )
    time.sleep(1.2)
    tracker.close()
    spooled: dict[str, list[tuple[int, float]]] = {}
    for r in RunSpool.open(tracker.spool_dir).read_metrics():
        spooled.setdefault(r.key, []).append((r.step, r.value))
    assert set(spooled) >= SYSTEM_KEYS
    steps = [s for s, _ in spooled["system/cpu_utilization_percentage"]]
    assert steps == list(range(len(steps))) and len(steps) >= 3  # every ~0.2 s, and at close
    total_mb = psutil.virtual_memory().total / 1e6
    for _, used in spooled["system/system_memory_usage_megabytes"]:
        assert 0 < used < total_mb
    assert all(0 <= v <= 100 for _, v in spooled["system/cpu_utilization_percentage"])

    client = _client(store_uri)
    run = client.get_run(tracker.mlflow_run_id)
    assert set(run.data.metrics) >= SYSTEM_KEYS
    stored = sorted(
        (m.step, m.value)
        for m in client.get_metric_history(run.info.run_id, "system/disk_usage_percentage")
    )
    assert stored == sorted(spooled["system/disk_usage_percentage"])


def test_a_run_shorter_than_the_interval_still_has_one_sample(tmp_path, store_uri, experiment):
    pytest.importorskip("psutil")
    tracker = Tracker(
        experiment,
        spool_root=tmp_path,
        tracking_uri=store_uri,
        system_metrics=True,
        system_metrics_interval=3600,
    )
    tracker.close()
    assert tracker.system_metrics_samples == 1
    run = _client(store_uri).get_run(tracker.mlflow_run_id)
    assert set(run.data.metrics) >= SYSTEM_KEYS


def test_without_a_store_no_system_metrics_and_no_mlflow_import(tmp_path):
    """Spool only: nothing imports mlflow (its collectors are used only with a store)."""
    code = textwrap.dedent(
        f"""
        import sys
        from mtltrain.tracking import Tracker, RunSpool
        t = Tracker("e", spool_root={str(tmp_path)!r}, system_metrics=True,
                    system_metrics_interval=0.05)
        t.close()
        keys = {{r.key for r in RunSpool.open(t.spool_dir).read_metrics()}}
        print("mlflow" in sys.modules, sorted(keys))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False []", out.stderr


# ------------------------------------------------------------------------------------------
# provenance
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["mtlbench", "run", "x", "--tracking-uri", "http://alice:hunter2@host:5000"],
            "mtlbench run x --tracking-uri 'http://alice:***@host:5000'",
        ),
        (
            ["mtlbench", "sync", "--tracking-uri=https://h/?token=hunter2&x=1"],
            "mtlbench sync '--tracking-uri=https://h/?token=***&x=1'",
        ),
        (
            ["tool", "--password", "hunter2", "--api-key=hunter2"],
            "tool --password '***' '--api-key=***'",
        ),
        (["tool", "postgresql://bob:hunter2@db/mlflow"], "tool 'postgresql://bob:***@db/mlflow'"),
        (["tool", "a b", "--seeds", "3"], "tool 'a b' --seeds 3"),
    ],
)
def test_command_line_redacts_secrets(argv, expected):
    assert command_line(argv) == expected
    assert "hunter2" not in command_line(argv)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_git_info_and_provenance_tags(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "trunk")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    _git(repo, "remote", "add", "origin", "https://bob:hunter2@git.example.com/team/proj.git")
    (repo / "train.py").write_text("print(1)\n")
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD")

    info = git_info(repo / "train.py")
    assert info == {
        "commit": head,
        "branch": "trunk",
        "dirty": "false",
        "repo_url": "https://bob:***@git.example.com/team/proj.git",
    }
    (repo / "train.py").write_text("print(2)\n")
    assert git_info(repo)["dirty"] == "true"
    assert git_info(tmp_path / "nowhere") == {}  # not in a git work tree

    monkeypatch.chdir(repo)
    tags = provenance_tags(argv=["mtlbench", "run", "demo"], packages=["pytest", "no-such-pkg"])
    assert tags["mlflow.source.git.commit"] == head
    assert tags["mlflow.source.git.branch"] == "trunk"
    assert tags["mtltrain.git.dirty"] == "true"
    assert tags["mlflow.source.name"] == tags["mtltrain.command"] == "mtlbench run demo"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["versions.python"] == platform.python_version()
    assert tags["versions.pytest"] == importlib.metadata.version("pytest")
    assert "versions.no-such-pkg" not in tags
    assert "hunter2" not in json.dumps(tags)


def test_uploaders_racing_to_set_one_experiment_tag_all_succeed(store_uri, experiment):
    """Runs of one experiment upload in parallel (a group run and its seeds, the report run),
    each setting the experiment's tags it does not see yet; MLflow's SQL store fails the
    slower of two writers of one new tag on its unique key (seen in about one race in four
    on this machine). Every uploader must go on, and the tag ends set once."""
    import threading
    from types import SimpleNamespace

    from mtltrain.tracking.mlflow_sink import MlflowSink

    client = _client(store_uri)
    exp_id = client.create_experiment(experiment)
    errors: list[BaseException] = []
    for trial in range(12):
        start = threading.Barrier(6)
        key = f"mtlbench.race{trial}"

        def upload(key: str = key, start: threading.Barrier = start) -> None:
            own = _client(store_uri)  # one client per uploader, as one per process
            start.wait()
            try:
                MlflowSink._upload_experiment_tags(
                    own, exp_id, SimpleNamespace(experiment_tags={key: "v"}), {}, lambda: None
                )
            except BaseException as e:  # collected and asserted below
                errors.append(e)

        threads = [threading.Thread(target=upload) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert errors == []
    tags = client.get_experiment(exp_id).tags
    assert all(tags[f"mtlbench.race{i}"] == "v" for i in range(12))
