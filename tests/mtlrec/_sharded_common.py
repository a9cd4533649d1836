"""What the sharded tests (test_sharded*.py) and their worker processes (_dmp_worker.py)
share: the model, the global batches, the balancer, the losses — built the same way
everywhere — and the tests' reference (unsharded, one process), 2-process run and
comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import mtlbalance
from mtlrec.metrics import task_loss
from mtlrec.models import MMoE, RecInputs, random_inputs

FEATURES = {"user": (40, 8), "item": (24, 4), "tags": (16, 4), "city": (8, 4)}
TASKS = {"click": "binary", "dwell": "regression"}
DENSE = 3


def build_model(config: dict[str, Any]) -> MMoE:
    """The test's MMoE (torchrec backend); the caller seeds the global RNG first."""
    return MMoE(
        FEATURES,
        TASKS,
        dense_dim=DENSE,
        num_experts=2,
        expert=(8,),
        tower=(4,),
        backend="torchrec",
        init_std=0.3,
    )


def global_batch(config: dict[str, Any], step: int) -> tuple[RecInputs, dict[str, Tensor]]:
    """Step ``step``'s global batch (the same on every process): ids with repeats within the
    batch (so rows of different ranks update the same table rows), a multi-hot feature."""
    g = torch.Generator().manual_seed(1000 + step)
    n = config["batch"]
    inputs = random_inputs(n, FEATURES, dense_dim=DENSE, multi_hot={"tags": 3}, generator=g)
    targets = {
        "click": (torch.rand(n, generator=g) < 0.4).float(),
        "dwell": 30.0 * torch.rand(n, generator=g),  # a loss 2-3 orders above the click's
    }
    return inputs, targets


def task_losses(
    config: dict[str, Any], preds: dict[str, Tensor], targets: dict[str, Tensor]
) -> dict[str, Tensor]:
    return {t: task_loss(kind)(preds[t], targets[t]) for t, kind in TASKS.items()}


def make_balancer(
    config: dict[str, Any], model: MMoE, *, tables: Any, process_group: Any = None
) -> mtlbalance.Balancer:
    """``config``: ``method`` (a registry name), optional ``engine`` (default ``"loop"``:
    DenseGradSync needs it; the Balancer path takes any), ``mode`` and ``max_update_norm``."""
    extra = {k: config[k] for k in ("mode", "max_update_norm") if k in config}
    return mtlbalance.make(
        config["method"],
        model.dense_shared_parameters(),
        model.task_parameters(),
        engine=config.get("engine", "loop"),
        tables=tables,
        process_group=process_group,
        **extra,
    )


# ---------------------------------------------------------------------- the tests' side
HERE = Path(__file__).resolve().parent
TIMEOUT_S = 240


def reference(config: dict[str, Any]) -> dict[str, Any]:
    """Plain single-process training on the whole global batch: the tables in the balancer's
    ``tables=`` (one backward of Σ_t c_t ℓ̃_t into them), torch's own optimizers (SGD; for
    exact_adagrad torch.optim.Adagrad with the fused kernel's eps) — no TorchRec sharding,
    no split backward, no collectives."""
    torch.manual_seed(0)
    model = build_model(config)
    tables = model.embedding_parameters()
    dense = [p for n, p in model.named_parameters() if not n.startswith("embedding.")]
    balancer = make_balancer(config, model, tables=tables)
    opts: list[torch.optim.Optimizer] = [torch.optim.SGD(dense, lr=config["lr"])]
    if config["optimizer"] == "exact_adagrad":
        eps = config["optimizer_args"]["eps"]
        opts.append(torch.optim.Adagrad(tables, lr=config["table_lr"], eps=eps))
    else:
        opts.append(torch.optim.SGD(tables, lr=config["table_lr"]))
    for step in range(config["steps"]):
        if step in config.get("skip_batches", ()):  # (a step the distributed run skips)
            continue
        inputs, targets = global_batch(config, step)
        _, preds = model(inputs)
        for o in opts:
            o.zero_grad()
        balancer.backward(task_losses(config, preds, targets))
        for o in opts:
            o.step()
    return {
        "dense": {
            n: p.detach().clone()
            for n, p in model.named_parameters()
            if not n.startswith("embedding.")
        },
        "tables": {f: w.detach().clone() for f, w in model.embedding.tables().items()},
    }


def run_two(config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    out = tmp_path / "out.pt"
    store = tmp_path / "store"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "_dmp_worker.py"),
                str(r),
                "2",
                str(store),
                str(cfg),
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        for r in range(2)
    ]
    logs = []
    try:
        for p in procs:
            stdout, _ = p.communicate(timeout=TIMEOUT_S)
            logs.append(stdout.decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(p.returncode for p in procs):
        pytest.fail("a worker failed:\n" + "\n----\n".join(log[-4000:] for log in logs))
    result: dict[str, Any] = torch.load(out)
    return result


def compare(got: dict[str, Any], want: dict[str, Any], start: dict[str, Any]) -> None:
    assert set(got["dense"]) == set(want["dense"])
    for name, w in want["dense"].items():
        torch.testing.assert_close(got["dense"][name], w, rtol=0, atol=1e-5, msg=name)
    for feature, w in want["tables"].items():
        # the training moved the tables (else the comparison would prove nothing)
        assert (w - start["tables"][feature]).abs().max() > 1e-3, feature
        torch.testing.assert_close(got["tables"][feature], w, rtol=0, atol=1e-5, msg=feature)


def start(config: dict[str, Any]) -> dict[str, Any]:
    return reference({**config, "steps": 0})


CKPT_WORKER = HERE / "_dmp_ckpt_worker.py"
CKPT_BOUND_S = 120  # one job takes ~12 s on a shared 2-core machine; far below a hang


def ckpt_job(config: dict[str, Any], folder: Path, name: str) -> tuple[int, Path]:
    """A 2-process job of ``_dmp_ckpt_worker.py`` (the checkpoint and reshard tests) with
    ``config`` written to ``folder/<name>.json``: its exit code and the file of its results,
    ``folder/<name>.pt``."""
    from mtltrain import distributed

    cfg = folder / f"{name}.json"
    cfg.write_text(json.dumps(config))
    out = folder / f"{name}.pt"
    code = distributed.launch(
        [sys.executable, str(CKPT_WORKER), str(cfg), str(out)],
        2,
        timeout_s=CKPT_BOUND_S,
        grace_s=10,
        extra_env={"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
    )
    return code, out
