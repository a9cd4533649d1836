"""The trainer: selection, resume, accumulation, precision, schedulers, errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import mtlbalance
from mtltrain.deltap import delta_p
from mtltrain.trainer import Task, Trainer, TrainerConfig, load_checkpoint_info

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("trainer_problem", HERE / "trainer_problem.py")
assert _spec is not None and _spec.loader is not None
P: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(P)
_Stop, _stop_at = P.Stop, P.stop_at

DIRS = {"a": {"mae": False}, "b": {"mae": False}}


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_selection_against_first_epoch_picks_best_val_delta_p() -> None:
    trainer = P.build(epochs=4)
    result = trainer.fit(*P.loaders())
    assert result.selection == "first_epoch"
    assert len(result.history) == 4
    assert result.history[0].val_delta_p == 0.0  # the reference is the first epoch itself
    best = max(result.history, key=lambda h: h.val_delta_p)
    assert result.best_epoch == best.epoch
    assert result.val == best.val and result.test == best.test
    first = result.history[0].val
    for h in result.history:  # recomputing Eq. (2) gives the logged value
        assert h.val_delta_p == pytest.approx(delta_p(h.val, first, DIRS))


def test_selection_against_stl_reference_and_test_delta_p() -> None:
    val_ref = {"a": {"mae": 0.5}, "b": {"mae": 50.0}}
    test_ref = {"a": {"mae": 0.4}, "b": {"mae": 40.0}}
    trainer = P.build(epochs=2, val_reference=val_ref, test_reference=test_ref)
    result = trainer.fit(*P.loaders())
    assert result.selection == "stl"
    for h in result.history:
        assert h.val_delta_p == pytest.approx(delta_p(h.val, val_ref, DIRS))
        assert h.test_delta_p == pytest.approx(delta_p(h.test, test_ref, DIRS))
    assert result.test_delta_p == result.history[result.best_epoch].test_delta_p


def test_select_tasks_restricts_selection_to_one_task() -> None:
    trainer = P.build("stl", epochs=3, select_tasks=["b"], balancer_kw={"task": "b"})
    result = trainer.fit(*P.loaders())
    first = result.history[0].val
    for h in result.history:
        assert h.val_delta_p == pytest.approx(delta_p(h.val, first, {"b": DIRS["b"]}))


def test_selection_last_and_no_val_loader() -> None:
    trainer = P.build(epochs=2, selection="last")
    train, _, test = P.loaders()
    result = trainer.fit(train, None, test)
    assert result.selection == "last" and result.best_epoch == 1 and result.val is None
    with pytest.raises(ValueError, match="validation loader"):
        P.build(epochs=2).fit(train, None, test)


def test_early_stopping_after_patience_without_improvement() -> None:
    # lr 0: nothing changes, so no epoch ever beats the first (Δp 0 is not > 0)
    trainer = P.build(epochs=10, lr=0.0, early_stopping=2, dropout=0.0)
    result = trainer.fit(*P.loaders())
    assert result.stopped_early
    assert len(result.history) == 3 and result.best_epoch == 0


def test_plateau_scheduler_gets_validation_delta_p() -> None:
    seen: list[float] = []

    class Recording(torch.optim.lr_scheduler.ReduceLROnPlateau):
        def step(self, metrics: Any, epoch: Any = None) -> None:  # type: ignore[override]
            seen.append(float(metrics))
            super().step(metrics)

    trainer = P.build(epochs=3)
    trainer.scheduler = Recording(trainer.optimizer, mode="max", patience=0, factor=0.5)
    trainer._plateau = True
    result = trainer.fit(*P.loaders())
    assert seen == [h.val_delta_p for h in result.history]


def test_step_scheduler_per_optimizer_step() -> None:
    trainer = P.build(epochs=1, scheduler="step", scheduler_interval="step")
    trainer.fit(*P.loaders(batch_size=32))  # 256 / 32 = 8 steps, StepLR(3, 0.5): 2 decays
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)


@pytest.mark.parametrize("method", ["dbmtl", "ew", "uw"])
def test_accumulation_equals_whole_batch(method: str) -> None:
    """Two micro-batches of 16 per step give the same parameters as batches of 32: the
    balancer balances the accumulated per-task gradients, once per optimizer step."""
    whole = P.build(method, epochs=1, dropout=0.0, selection="last")
    whole.fit(P.loaders(32, shuffle=False)[0])
    accumulated = P.build(method, epochs=1, dropout=0.0, selection="last", accumulate=2)
    accumulated.fit(P.loaders(16, shuffle=False)[0])
    assert whole.step == accumulated.step == 8
    assert whole.balancer.step == accumulated.balancer.step == 8  # DB-MTL's k per step
    for k, v in _params(whole).items():
        torch.testing.assert_close(_params(accumulated)[k], v, rtol=1e-4, atol=1e-5)


def test_accumulation_last_short_group_still_steps() -> None:
    trainer = P.build(epochs=1, accumulate=3, selection="last")
    trainer.fit(P.loaders(32, shuffle=False)[0])  # 8 micro-batches: groups of 3, 3, 2
    assert trainer.step == 3


def test_resume_in_process_matches_uninterrupted(tmp_path: Path) -> None:
    reference = P.build(scheduler="step")
    ref = reference.fit(*P.loaders())

    class Stop(Exception):
        pass

    def stop(trainer: Trainer, step: int) -> None:
        if step == 13:  # mid second epoch (8 steps per epoch), one step after a checkpoint
            raise Stop

    first = P.build(
        scheduler="step", checkpoint_dir=str(tmp_path), checkpoint_every=4, callbacks=[stop]
    )
    with pytest.raises(Stop):
        first.fit(*P.loaders())
    info = load_checkpoint_info(tmp_path)
    assert (info["epoch"], info["batches_done"], info["step"]) == (1, 4, 12)
    second = P.build(scheduler="step", checkpoint_dir=str(tmp_path), seed=123)  # seed unused
    got = second.fit(*P.loaders(), resume=True)
    assert got.val == ref.val and got.test == ref.test and got.best_epoch == ref.best_epoch
    for k, v in _params(reference).items():
        assert torch.equal(_params(second)[k], v), k


def test_resume_with_a_new_reference_reselects_from_history(tmp_path: Path) -> None:
    """STL runs trained further between two calls change the reference: the resumed run
    recomputes every finished epoch's Δp against the new one instead of mixing the two."""
    old_ref = {"a": {"mae": 0.5}, "b": {"mae": 50.0}}
    new_ref = {"a": {"mae": 0.01}, "b": {"mae": 500.0}}  # weights the tasks very differently
    first = P.build(epochs=3, val_reference=old_ref, checkpoint_dir=str(tmp_path))
    first.fit(*P.loaders())
    resumed = P.build(epochs=5, val_reference=new_ref, checkpoint_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="different validation reference"):
        result = resumed.fit(*P.loaders(), resume=True)
    assert len(result.history) == 5
    for h in result.history:
        assert h.val_delta_p == pytest.approx(delta_p(h.val, new_ref, DIRS))
    assert result.best_epoch == max(result.history, key=lambda h: h.val_delta_p).epoch
    assert result.selection == "stl"
    same = P.build(epochs=5, val_reference=new_ref, checkpoint_dir=str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same reference: nothing to say
        same.fit(*P.loaders(), resume=True)


def test_resume_after_sigkill_matches_uninterrupted(tmp_path: Path) -> None:
    """A real process killed with SIGKILL mid-epoch, resumed from its last checkpoint by a new
    process, ends with exactly the metrics and weights of an uninterrupted run."""
    script = str(HERE / "trainer_problem.py")
    ref_out, out = tmp_path / "ref.json", tmp_path / "out.json"
    run = [sys.executable, script]
    subprocess.run([*run, str(ref_out), str(tmp_path / "ref_ckpt")], check=True, timeout=120)
    killed = subprocess.run(
        [*run, str(out), str(tmp_path / "ckpt"), "--kill-at", "11"], timeout=120
    )
    assert killed.returncode == -9 and not out.exists()
    info = load_checkpoint_info(tmp_path / "ckpt")
    assert info["batches_done"] > 0  # the last checkpoint is mid-epoch
    subprocess.run([*run, str(out), str(tmp_path / "ckpt")], check=True, timeout=120)
    assert json.loads(out.read_text()) == json.loads(ref_out.read_text())


def test_bf16_autocast_trains() -> None:
    trainer = P.build(epochs=2, precision="bf16")
    dtypes: list[torch.dtype] = []
    trainer.model.enc[0].register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    result = trainer.fit(*P.loaders())
    assert all(v == v for t in result.test.values() for v in t.values())  # finite, not NaN
    assert result.history[-1].val_delta_p > 0  # it learned
    # the shared layer ran in bfloat16 (autocast) in training and evaluation, never in fp32
    assert set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # fp32 weights


def test_after_step_hook_runs_for_famo() -> None:
    trainer = P.build("famo", epochs=1, selection="last")
    assert trainer._needs_after_step and not P.build("dbmtl")._needs_after_step
    trainer.fit(P.loaders()[0])
    famo = trainer.balancer.state_dict()["aggregator"]["_extra_state"]
    assert famo["updates"] == trainer.step == 8  # one FAMO weight update per optimizer step
    assert not torch.equal(famo["xi"], torch.zeros(2))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="epochs"):
        TrainerConfig(epochs=0)
    with pytest.raises(ValueError, match="precision"):
        TrainerConfig(epochs=1, precision="fp8")
    with pytest.raises(ValueError, match="checkpoint_dir"):
        TrainerConfig(epochs=1, checkpoint_every=5)
    model = P.Model()
    uw = mtlbalance.make("uw", model.enc, dict(model.heads.items()))
    uw.backward({t: model(torch.randn(4, 8))[1][t].pow(2).mean() for t in P.TASKS})
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match=r"balancer\.parameters"):
        Trainer(model, P.tasks(), uw, opt, config=TrainerConfig(epochs=1))
    with pytest.raises(TypeError, match="reset/update/compute"):
        Task("a", nn.functional.mse_loss, {"mae": lambda p, t: 0.0})  # type: ignore[dict-item]
    trainer = P.build(epochs=1, selection="last")
    with pytest.raises(ValueError, match="no targets for tasks"):
        trainer.fit([(torch.randn(4, 8), {"a": torch.randn(4)})])
    with pytest.raises(TypeError, match="pairs"):
        trainer.fit([torch.randn(4, 8)])


def test_fp16_dynamic_loss_scale_skips_overflow_and_recovers() -> None:
    """fp16 autocast: the balancer scales every task's backward by S and unscales in fp32; an
    overflowing S skips the step (no optimizer step, no balancer step) and halves S."""
    trainer = P.build(epochs=3, precision="fp16", init_scale=2.0**30, growth_interval=4)
    train, val, test = P.loaders(n=512)
    result = trainer.fit(train, val, test)
    skipped = sum(h.skipped_steps for h in result.history)
    assert skipped > 0
    assert result.steps + skipped == 3 * len(train)
    assert trainer.balancer.step == result.steps  # DB-MTL's k counts real steps only
    assert trainer.loss_scale < 2.0**30
    assert result.history[-1].val_delta_p > 0  # it still learned
    assert all(v == v for t in result.test.values() for v in t.values())


def test_fp16_loss_scale_grows_after_growth_interval_finite_steps() -> None:
    """No overflow at a small scale: S doubles every growth_interval steps (by hand: 24 steps,
    interval 5 -> 4 doublings), and the scale is what the balancer was given."""
    trainer = P.build(epochs=3, precision="fp16", init_scale=4.0, growth_interval=5)
    given: list[float] = []
    backward = trainer.balancer.backward

    def spy(losses, **kw):
        given.append(kw["loss_scale"])
        return backward(losses, **kw)

    trainer.balancer.backward = spy
    result = trainer.fit(*P.loaders())
    assert sum(h.skipped_steps for h in result.history) == 0
    assert trainer.loss_scale == 4.0 * 2**4
    assert given[0] == 4.0 and given[5] == 8.0 and given[-1] == 4.0 * 2**4


def test_resume_keeps_the_fp16_loss_scale(tmp_path: Path) -> None:
    """Killed after the scale changed, the resumed run continues with the same scale and
    growth count as an uninterrupted run (bit-identical weights)."""
    kw = {"precision": "fp16", "init_scale": 2.0**20, "growth_interval": 3,
          "balancer_kw": {"engine": "loop"}}  # fmt: skip
    reference = P.build(**kw)
    ref = reference.fit(*P.loaders())
    first = P.build(checkpoint_dir=str(tmp_path), checkpoint_every=2,
                    callbacks=[_stop_at(6)], **kw)  # fmt: skip
    with pytest.raises(_Stop):
        first.fit(*P.loaders())
    assert first.loss_scale != 2.0**20  # the scale moved before the kill
    second = P.build(checkpoint_dir=str(tmp_path), **kw)
    got = second.fit(*P.loaders(), resume=True)
    assert second.loss_scale == reference.loss_scale
    assert second.precision.good_steps == reference.precision.good_steps
    assert got.test == ref.test
    for k, v in _params(reference).items():
        assert torch.equal(_params(second)[k], v), k


def test_best_model_holds_the_selected_epochs_weights(tmp_path: Path) -> None:
    weights: dict[int, dict[str, torch.Tensor]] = {}

    def keep(trainer: Trainer, step: int) -> None:
        if step % 8 == 0:  # 8 steps per epoch: the last step of epoch step // 8 - 1
            weights[step // 8 - 1] = _params(trainer)

    trainer = P.build(epochs=4, checkpoint_dir=str(tmp_path), callbacks=[keep], lr=3e-2)
    result = trainer.fit(*P.loaders())
    best = torch.load(tmp_path / "best_model.pt", weights_only=True)
    assert result.best_epoch == max(result.history, key=lambda h: h.val_delta_p).epoch
    for k, v in weights[result.best_epoch].items():
        assert torch.equal(best[k], v), k
    if result.best_epoch != 3:  # and not simply the last epoch's
        assert any(not torch.equal(best[k], v) for k, v in weights[3].items())


def test_evaluation_runs_in_eval_mode() -> None:
    """Dropout is off while evaluating (the same metrics twice), and the model is back in
    training mode afterwards."""
    trainer = P.build(epochs=1, dropout=0.5)
    _, val, _ = P.loaders()
    trainer.model.train()
    first, _ = trainer.evaluate(val)
    second, _ = trainer.evaluate(val)
    assert first == second
    assert trainer.model.training
    trainer.model.eval()
    with torch.no_grad():
        outs = [trainer.model(x)[1]["a"] for x, _ in val]
    trainer.model.train()
    manual = torch.cat(outs)
    targets = torch.cat([y["a"] for _, y in val])
    assert first["a"]["mae"] == pytest.approx((manual - targets).abs().mean().item(), rel=1e-5)


def test_resumed_run_continues_the_same_tracked_run(tmp_path: Path) -> None:
    from mtltrain.tracking import RunSpool, Tracker

    spool = tmp_path / "spool"

    class Stop(Exception):
        pass

    def stop(trainer: Trainer, step: int) -> None:
        if step == 13:
            raise Stop

    tracker = Tracker("resume", spool_root=spool, log_every=4)
    first = P.build(
        checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=4, tracker=tracker, callbacks=[stop]
    )
    with pytest.raises(Stop):
        first.fit(*P.loaders())
    tracker.close("KILLED")
    run_id = load_checkpoint_info(tmp_path / "ckpt")["tracker_run_id"]
    assert run_id == tracker.run_id
    with Tracker("resume", spool_root=spool, resume=run_id, log_every=4) as again:
        second = P.build(checkpoint_dir=str(tmp_path / "ckpt"), tracker=again)
        result = second.fit(*P.loaders(), resume=True)
    run = RunSpool.open(spool / run_id)
    assert run.status == "FINISHED"
    steps = {r.step for r in run.read_metrics() if r.key == "train/loss/a"}
    assert steps == set(range(24))  # 3 epochs x 8 steps, none lost across the restart
    finals = {r.key: r.value for r in run.read_metrics() if r.key.startswith("final.")}
    assert finals["final.epoch"] == result.best_epoch
    assert finals["final.test.b.mae"] == result.test["b"]["mae"]
    with pytest.raises(ValueError, match="belongs to experiment"):
        Tracker("other", spool_root=spool, resume=run_id)
    assert RunSpool.open(spool / run_id).status == "FINISHED"  # left as it was


def test_progress_bar_has_a_total_the_running_loss_and_the_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bar counts batches of a known total (so it can show an ETA), also when an epoch
    resumes mid-way, shows each task's running training loss and the caller's label."""
    trainer = P.build(
        epochs=2, progress=True, progress_label="run 3 of 7", log_every=2,
        checkpoint_dir=str(tmp_path), checkpoint_every=4, callbacks=[_stop_at(12)],
    )  # fmt: skip
    with pytest.raises(_Stop):
        trainer.fit(*P.loaders())
    err = capsys.readouterr().err
    assert "run 3 of 7: epoch 1/2" in err
    assert "0/8 [" in err  # 256 rows / batch 32: a total, not a bare count
    assert "loss a " in err and ", b " in err
    resumed = P.build(epochs=2, progress=True, checkpoint_dir=str(tmp_path))
    resumed.fit(*P.loaders(), resume=True)
    err = capsys.readouterr().err
    assert "epoch 2/2:  50%" in err  # resumed at batch 4 of 8
