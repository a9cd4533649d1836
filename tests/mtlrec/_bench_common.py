"""What the tests of mtlbench runs with sharded tables or streamed data share: running
``mtlbench run`` in a subprocess, and reading a run's final model from its checkpoint (one
file, or a 2-rank sharded checkpoint put together)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from mtltrain.checkpoint import load_file

TIMEOUT_S = 300


def model_and_train(tables: str, sharding: str, batch: int, eval_batch: int) -> str:
    """The ``[model]`` and ``[train]`` tables of the tests' specs: a small MMoE, plain SGD.
    With ``tables = "sharded"`` the fused table optimizer is SGD at the dense optimizer's rate
    and the spec's SGD has no momentum (fused SGD has none): the unsharded run's
    torch.optim.SGD over every parameter is then the same update. ``sharding``: the TOML
    inline table of the sharding constraints."""
    sharded = (
        f'table_optimizer = "exact_sgd"\ntable_lr = 0.05\nsharding = {sharding}\n'
        if tables == "sharded"
        else ""
    )
    return f"""
[model]
arch = "mmoe"
embedding_dim = 8
tables = "{tables}"
{sharded}num_experts = 2
expert = [16]
tower = [8]

[train]
epochs = 2
batch_size = {batch}
eval_batch_size = {eval_batch}
optimizer = "sgd"
lr = 0.05
momentum = 0.0
"""


def mtlbench_run(
    out: Path, spec: Path, *extra: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mtlbench.cli", "run", str(spec), "--no-tracking", "--quiet"]
    cmd += ["--spool", str(out / "spool"), "--out", str(out), "--device", "cpu", *extra]
    done = subprocess.run(cmd, timeout=TIMEOUT_S, cwd=out, capture_output=True, text=True)
    if check:
        assert done.returncode == 0, (
            f"{' '.join(cmd)} exited {done.returncode}; its stderr ends:\n{done.stderr[-3000:]}"
        )
    return done


def state_key(name: str) -> str:
    for prefix in ("_dmp_wrapped_module.", "module."):
        name = name.removeprefix(prefix)
    return name


def sharded_state(folder: Path) -> dict[str, torch.Tensor]:
    """The whole model from a 2-rank checkpoint: each sharded table put together from both
    ranks' shards (offsets and sizes as saved), every replicated tensor equal on both."""
    manifest = load_file(folder / "manifest.pt")
    ranks = [load_file(folder / manifest["save"] / f"rank{r}-of-2.pt")["model"] for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    out: dict[str, torch.Tensor] = {}
    for name, value in ranks[0].items():
        if isinstance(value, dict) and "sharded" in value:
            whole = torch.full(value["sharded"], float("nan"))
            for part in (ranks[0][name], ranks[1][name]):
                for shard in part["shards"]:
                    (r, c), (n, d) = shard["offsets"], shard["sizes"]
                    whole[r : r + n, c : c + d] = shard["tensor"].float()
            assert not whole.isnan().any(), f"{name}: the shards do not cover the table"
            out[state_key(name)] = whole
        else:
            assert torch.equal(value, ranks[1][name]), f"{name} differs between the ranks"
            out[state_key(name)] = value
    return out


def plain_state(path: Path) -> dict[str, torch.Tensor]:
    return {state_key(k): v for k, v in load_file(path)["model"].items()}
