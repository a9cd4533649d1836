"""One rank of the trainer's kill-and-resume test (a real process):

    python _trainer_worker.py OUT.json CKPT_DIR [KILL_RANK KILL_STEP]

The two-task problem of tests/mtltrain/trainer_problem.py (dropout included), DB-MTL with
``process_group="world"``, a checkpoint every 3 steps, ``fit(resume=True)``; the rank
``KILL_RANK`` SIGKILLs itself after optimizer step ``KILL_STEP``. Rank 0 writes OUT.json.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mtltrain"))

import trainer_problem

from mtltrain import distributed
from mtltrain.trainer import Trainer


def _plain(obj: object) -> object:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def main(argv: list[str]) -> None:
    out, ckpt = argv[0], argv[1]
    kill = (int(argv[2]), int(argv[3])) if len(argv) > 3 else (-1, -1)
    job = distributed.init_from_env("cpu", timeout_s=30)
    assert job is not None

    seen: list[int] = []

    def killer(trainer: Trainer, step: int) -> None:
        seen.append(step)
        if (job.rank, step) == kill:
            os.kill(os.getpid(), signal.SIGKILL)

    trainer = trainer_problem.build(
        "dbmtl",
        balancer_kw={"process_group": "world"},
        checkpoint_dir=ckpt,
        checkpoint_every=3,
        callbacks=[killer],
    )
    result = trainer.fit(*trainer_problem.loaders(), resume=True)
    if job.rank == 0:
        params = {k: v.tolist() for k, v in trainer.model.state_dict().items()}
        state = _plain(trainer.balancer.state_dict())
        with open(out, "w") as f:
            json.dump(
                {
                    "val": result.val,
                    "steps": result.steps,
                    "first_step": seen[0],
                    "params": params,
                    "bal": state,
                },
                f,
            )


if __name__ == "__main__":
    main(sys.argv[1:])
    distributed.end_rank(0)  # leave the job, skip the finalisation (docs/distributed.md)
