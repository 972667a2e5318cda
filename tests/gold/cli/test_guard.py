"""Runs that never lose work (issue 14, items 2 and 3): checkpoints appear whole or not at all, a real SIGTERM
during a save leaves a run that ``--resume latest`` continues, and a non-finite loss, gradient or weight stops the
run before the optimizer step or the save, naming the last (finite) checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from gold import GoldTrainer
from gold.cli import main
from gold.cli.guard import resolve_resume
from gold.models.checkpoint import MANIFEST, RUN_FILE, checkpoint_run, verify_checkpoint
from gold.training.guard import STAGING, NonFiniteError, ZeroGradientWarning, last_checkpoint
from tests.gold.cli.test_commands import _recipe
from tests.gold.conftest import ROWS, tiny, training_args
from tests.gold.models.test_checkpoint import cut

# a `gold train` whose optimizer save at SLOW_STEP prints SAVING and then hangs: the test's SIGTERM lands mid-save
# (model weights written, optimizer written, trainer_state.json not yet)
HANGING_SAVE = textwrap.dedent("""
    import sys, time
    from gold.training.trainer import GoldTrainer
    original = GoldTrainer._save_optimizer_and_scheduler
    def hanging(self, output_dir):
        original(self, output_dir)
        if self.state.global_step == int(sys.argv[1]):
            print("SAVING", output_dir, flush=True)
            time.sleep(120)
    GoldTrainer._save_optimizer_and_scheduler = hanging
    from gold.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def _interrupted_run(recipe, signum: int, slow_step: int, *args: str) -> subprocess.CompletedProcess[str]:
    process = subprocess.Popen([sys.executable, "-c", HANGING_SAVE, str(slow_step), "train", str(recipe), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("SAVING"):
            assert f"{STAGING}/checkpoint-{slow_step}" in line  # the save is staged, not in place
            break
    else:
        pytest.fail(f"the run ended before its save: {process.wait()} {process.stderr.read()[-2000:]}")  # type: ignore[union-attr]
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_save_leaves_a_resumable_run(tmp_path, capsys, signum) -> None:
    recipe = _recipe(tmp_path)
    saving = ["training.save_strategy='steps'", "training.save_steps=1", "training.max_steps=4"]
    done = _interrupted_run(recipe, signum, 3, *saving)
    out = tmp_path / "out"
    assert done.returncode == 130, done.stderr[-2000:]
    assert f"interrupted ({signal.Signals(signum).name})" in done.stderr and "Traceback" not in done.stderr
    assert f"the last whole checkpoint is {out / 'checkpoint-2'}" in done.stderr
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]  # no half checkpoint
    staged = out / STAGING / "checkpoint-3"
    assert staged.is_dir() and not (staged / "trainer_state.json").exists()
    capsys.readouterr()
    assert main(["train", str(recipe), *saving, "--resume", "latest"]) == 0
    assert "skipping incomplete checkpoint" in capsys.readouterr().err  # says so, then resumes from checkpoint-2
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{i}" for i in range(1, 5)]
    assert not (out / STAGING / "checkpoint-3").exists()  # saved again at step 3, whole this time


def test_an_old_style_half_checkpoint_is_skipped_by_resume_latest(tmp_path, capsys) -> None:
    recipe = str(_recipe(tmp_path))
    saving = ["training.save_strategy='steps'", "training.save_steps=1"]
    assert main(["train", recipe, "training.max_steps=2", *saving]) == 0
    out = tmp_path / "out"
    (out / "checkpoint-2" / "trainer_state.json").unlink()  # what a killed plain-Trainer save leaves
    assert last_checkpoint(out) == out / "checkpoint-1"
    assert main(["train", recipe, "training.max_steps=3", *saving, "--resume", "latest"]) == 0
    assert "checkpoint-2 (no trainer_state.json: an interrupted save)" in capsys.readouterr().err


def test_a_checkpoint_of_another_shape_is_named(tmp_path, capsys) -> None:
    recipe = str(_recipe(tmp_path))
    assert main(["train", recipe, "training.max_steps=1", "training.save_strategy=steps", "training.save_steps=1"]) == 0
    other = ["student.tiny.hidden_size=32", f"training.output_dir={tmp_path / 'other'}"]
    checkpoint = tmp_path / "out" / "checkpoint-1"
    with pytest.raises(SystemExit, match=r"differs from the checkpoint's \(saved in it\) in student.tiny.hidden_size"):
        main(["train", recipe, *other, "--resume", str(checkpoint)])  # by its recipe, before a model loads
    (checkpoint / MANIFEST).unlink()
    (tmp_path / "out" / RUN_FILE).unlink()  # a run of an older gold: no recipe to check, found when loading
    with pytest.raises(SystemExit) as exit_info:
        main(["train", recipe, *other, "--resume", str(checkpoint)])
    assert exit_info.value.code == 2
    assert "holds a model of another shape (size mismatch" in capsys.readouterr().err


def _trainer(tmp_path, student_tokenizer, teacher_tokenizer, **args):
    student, teacher = tiny(student_tokenizer), tiny(teacher_tokenizer, seed=1)
    settings = {"save_strategy": "steps", "save_steps": 1, "save_total_limit": 1, "max_steps": 4, **args}
    return GoldTrainer(student, teacher, args=training_args(tmp_path, **settings), train_dataset=ROWS,
                       student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer)  # fmt: skip


def _finite(checkpoint) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(checkpoint / "model.safetensors").values())


def test_nan_weights_are_never_saved_and_the_finite_checkpoint_stays(tmp_path, student_tokenizer,
                                                                          teacher_tokenizer) -> None:  # fmt: skip
    from transformers import TrainerCallback

    trainer = _trainer(tmp_path, student_tokenizer, teacher_tokenizer)

    class Poison(TrainerCallback):  # NaN enters the student's weights after the second step, before its save
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))

    trainer.add_callback(Poison())
    with pytest.raises(NonFiniteError) as error:
        trainer.train()
    message = str(error.value)
    # the step-2 checkpoint is refused (NaN weights), so rotation (save_total_limit=1) keeps checkpoint-1
    run = tmp_path / "run"
    assert "weights are not finite at step 2" in message and str(run / "checkpoint-1") in message
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1"] and _finite(run / "checkpoint-1")


def test_a_nan_loss_names_its_term_before_the_optimizer_step(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    trainer = _trainer(tmp_path, student_tokenizer, teacher_tokenizer, save_strategy="no")
    with torch.no_grad():
        trainer.model.get_output_embeddings().weight[0, 0] = float("inf")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    expected = r"before the optimizer step of step 1: the loss is not finite \(loss/hybrid\); no checkpoint was saved"
    with pytest.raises(NonFiniteError, match=expected):
        trainer.train()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the optimizer never stepped


def test_a_zero_gradient_norm_warns(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    """All-zero logits (what a diverged run left): every gradient is exactly zero, and the run says so."""
    trainer = _trainer(tmp_path, student_tokenizer, teacher_tokenizer, save_strategy="no", max_steps=1)
    with torch.no_grad():
        trainer.model.get_output_embeddings().weight.zero_()
        trainer.model.model.norm.weight.zero_()
    with pytest.warns(ZeroGradientWarning, match="step 1: the gradient norm is 0"):
        trainer.train()


def test_a_nan_gradient_stops_before_the_optimizer_step(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    """A finite loss whose gradient is not (here forced by a hook): the step is refused and the weights stay."""
    trainer = _trainer(tmp_path, student_tokenizer, teacher_tokenizer, save_strategy="no")
    weight = trainer.model.get_output_embeddings().weight
    weight.register_hook(lambda grad: grad * float("nan"))
    before = weight.detach().clone()
    with pytest.raises(NonFiniteError, match=r"optimizer step of step 1: the gradient norm is nan"):
        trainer.train()
    assert torch.equal(weight.detach(), before)


def test_a_step_saved_again_replaces_its_checkpoint_whole(tmp_path) -> None:
    """Resumed from checkpoint-1 while checkpoint-2 exists: step 2 is saved again, swapped in whole, and the
    staging folder is gone afterwards."""
    recipe = str(_recipe(tmp_path))
    saving = ["training.save_strategy=steps", "training.save_steps=1", "training.max_steps=2"]
    assert main(["train", recipe, *saving]) == 0
    out = tmp_path / "out"
    first = (out / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns
    assert main(["train", recipe, *saving, "--resume", str(out / "checkpoint-1")]) == 0
    assert (out / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns > first
    assert _finite(out / "checkpoint-2") and not (out / STAGING).exists()


# ---- issue 29 items 6 and 7: damaged checkpoints, and resumes that would not continue their run ----

SAVING = ["training.save_strategy=steps", "training.save_steps=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A `gold train` run of 2 steps with checkpoint-1 and checkpoint-2: its recipe and output folder (copy it)."""
    root = tmp_path_factory.mktemp("trained")
    recipe = _recipe(root)
    assert main(["train", str(recipe), "training.max_steps=2", *SAVING]) == 0
    return recipe, root / "out"


def _copy(trained, tmp_path):
    """The trained run copied to ``tmp_path / 'out'``, and the argv that trains the recipe there."""
    recipe, out = trained
    shutil.copytree(out, tmp_path / "out")
    return tmp_path / "out", ["train", str(recipe), *SAVING, f"training.output_dir={tmp_path / 'out'}"]


def test_each_save_carries_a_manifest_with_the_run_recipe(trained) -> None:
    _, out = trained
    recorded = json.loads((out / RUN_FILE).read_text())
    for step in (1, 2):
        checkpoint = out / f"checkpoint-{step}"
        assert verify_checkpoint(checkpoint) is None and checkpoint_run(checkpoint) == recorded
        files = json.loads((checkpoint / MANIFEST).read_text())["files"]
        assert {"model.safetensors", "optimizer.pt", "trainer_state.json", "rng_state.pth"} <= set(files)


DAMAGES = {
    "model.safetensors": (lambda c: cut(c / "model.safetensors"), "model.safetensors has"),
    "optimizer.pt": (lambda c: cut(c / "optimizer.pt"), "optimizer.pt has"),
    "trainer_state.json": (lambda c: (c / "trainer_state.json").write_text("{", encoding="utf-8"), "not valid JSON"),
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_resume_latest_falls_back_past_a_damaged_checkpoint(trained, tmp_path, name) -> None:
    out, _ = _copy(trained, tmp_path)
    damage, reason = DAMAGES[name]
    damage(out / "checkpoint-2")
    resume, notes = resolve_resume(out, "latest")
    assert resume == str(out / "checkpoint-1")
    assert len(notes) == 1 and f"skipping incomplete checkpoint {out / 'checkpoint-2'} (" in notes[0]
    assert reason in notes[0] and notes[0].endswith(f"resuming {out / 'checkpoint-1'}")
    assert last_checkpoint(out) == out / "checkpoint-1"  # what the stop messages name as the last whole one


def test_a_resume_past_a_cut_checkpoint_trains_on_from_the_one_before(trained, tmp_path, capsys) -> None:
    out, argv = _copy(trained, tmp_path)
    cut(out / "checkpoint-2" / "model.safetensors")
    capsys.readouterr()
    assert main([*argv, "training.max_steps=3", "--resume", "latest"]) == 0
    assert f"gold train: skipping incomplete checkpoint {out / 'checkpoint-2'} (model.safetensors" in \
        capsys.readouterr().err  # fmt: skip
    assert [verify_checkpoint(out / f"checkpoint-{step}") for step in (1, 2, 3)] == [None, None, None]


def test_resume_refuses_another_runs_checkpoint_by_the_recipe_saved_in_it(trained, tmp_path) -> None:
    """The checkpoint's own recipe counts, not only the output folder's gold_run.json (here: none beside it)."""
    out, argv = _copy(trained, tmp_path)
    (out / RUN_FILE).unlink()
    fresh = [*argv[:-1], f"training.output_dir={tmp_path / 'fresh'}", "training.max_steps=3", "loss.beta=0.2"]
    with pytest.raises(SystemExit, match=r"the recipe differs from the checkpoint's \(saved in it\) in loss\.beta "
                                         r"\(0\.5 → 0\.2\)"):  # fmt: skip
        main([*fresh, "--resume", str(out / "checkpoint-2")])


def test_resume_refuses_max_steps_not_beyond_the_checkpoint(trained, tmp_path) -> None:
    _, argv = _copy(trained, tmp_path)
    with pytest.raises(SystemExit, match=r"checkpoint is at step 2 and training.max_steps is 2: no step would be"):
        main([*argv, "training.max_steps=2", "--resume", "latest"])


def test_resume_refuses_a_checkpoint_without_its_scheduler(trained, tmp_path) -> None:
    """Trainer would load neither the optimizer nor the schedule, and go on at step 2 as if from scratch."""
    out, argv = _copy(trained, tmp_path)
    (out / "checkpoint-2" / "scheduler.pt").unlink()
    (out / "checkpoint-2" / MANIFEST).unlink(missing_ok=True)  # saved without scheduler.pt, not damaged since
    with pytest.raises(SystemExit, match=r"the checkpoint has no scheduler.pt .*restart the optimizer"):
        main([*argv, "training.max_steps=3", "--resume", str(out / "checkpoint-2")])


def test_a_resume_that_cannot_be_checked_or_reproduced_says_so(trained, tmp_path, capsys) -> None:
    """A run of an older gold (no manifest, no gold_run.json) resumed under a changed recipe, from a checkpoint
    without RNG state: it goes on, with one line for each thing that cannot be checked or will not reproduce."""
    out, argv = _copy(trained, tmp_path)
    (out / RUN_FILE).unlink()
    (out / "checkpoint-2" / MANIFEST).unlink(missing_ok=True)
    (out / "checkpoint-2" / "rng_state.pth").unlink()
    capsys.readouterr()
    assert main([*argv, "training.max_steps=3", "loss.beta=0.2", "--resume", "latest"]) == 0
    err = capsys.readouterr().err
    assert "no recipe is recorded for this checkpoint" in err and "cannot be checked" in err
    assert "has no rng_state.pth: dropout and other draws" in err
