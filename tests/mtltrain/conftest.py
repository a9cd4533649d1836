"""Shared fixtures of the mtltrain tests: a real MLflow SQLite store, read-back helpers, a
closed loopback port, and a tensor subclass that counts device-to-host reads."""

from __future__ import annotations

import math
import socket
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch

from mtltrain.tracking import RunSpool


@pytest.fixture(scope="session")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite MLflow store for the session (its migrations take seconds); tests keep
    apart by experiment name."""
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    mlflow.MlflowClient(uri).search_experiments()  # create the schema once
    return uri


@pytest.fixture
def experiment(request: pytest.FixtureRequest) -> str:
    """An experiment name of this test's own."""
    return request.node.name.replace("[", "-").replace("]", "")


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts what MLflow took through ``MlflowClient.log_batch`` (a pass-through: the real
    client still does the work). MLflow's SQL stores drop exact duplicate metrics, so the
    store's contents alone cannot tell an upload of the remainder from a re-upload of all."""
    mlflow = pytest.importorskip("mlflow")
    counts = {"calls": 0, "metrics": 0, "params": 0, "tags": 0}
    real = mlflow.MlflowClient.log_batch

    def log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
        result = real(self, run_id, metrics, params, tags, synchronous)
        counts["calls"] += 1  # counted once the store took it
        counts["metrics"] += len(metrics)
        counts["params"] += len(params)
        counts["tags"] += len(tags)
        return result

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", log_batch)
    return counts


def closed_port() -> int:
    """A loopback port nobody listens on (bound once to pick it, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of a metric's whole history in the store, by step then value."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def spool_metrics(spool_dir: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in RunSpool.open(spool_dir).read_metrics():
        out[r.key].append((r.step, r.value))
    return {k: sorted(v) for k, v in out.items()}


def assert_store_has_spool(client: Any, run_id: str, spool_dir: Path) -> None:
    """The store's run holds exactly the spooled params, metric histories (values, steps and
    timestamps, each once) and artifacts."""
    spool = RunSpool.open(spool_dir)
    run = client.get_run(run_id)
    assert run.data.params == spool.read_params()
    expected: dict[str, list[tuple[int, float, int]]] = defaultdict(list)
    for r in spool.read_metrics():
        expected[r.key].append((r.step, r.value, r.timestamp))
    assert set(run.data.metrics) == set(expected)
    for key, rows in expected.items():
        got = sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key))
        assert got == sorted(rows), key
    assert sorted(artifact_files(client, run_id)) == spool.artifact_paths()


def artifact_files(client: Any, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            out += artifact_files(client, run_id, info.path)
        else:
            out.append(info.path)
    return out


class HostReads(torch.Tensor):
    """A tensor that counts the operations which copy its values to the host."""

    count = 0
    _READS = frozenset(
        {
            torch.Tensor.item,
            torch.Tensor.tolist,
            torch.Tensor.cpu,
            torch.Tensor.numpy,
            torch.Tensor.__float__,
            torch.Tensor.__int__,
            torch.Tensor.__bool__,
            torch.Tensor.__index__,
            torch.Tensor.__format__,
            torch.Tensor.__repr__,
        }
    )

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in cls._READS:
            HostReads.count += 1
        return super().__torch_function__(func, types, args, kwargs or {})


def same_float(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))
