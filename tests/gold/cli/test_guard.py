"""Runs that never lose work (issue 14, items 2 and 3): checkpoints appear whole or not at all, a real SIGTERM
during a save leaves a run that ``--resume latest`` continues, and a non-finite loss, gradient or weight stops the
run before the optimizer step or the save, naming the last (finite) checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from gold import GoldTrainer
from gold.cli import main
from gold.training.guard import STAGING, NonFiniteError, ZeroGradientWarning, last_checkpoint
from tests.gold.cli.test_commands import _recipe
from tests.gold.conftest import ROWS, tiny, training_args

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
    with pytest.raises(SystemExit) as exit_info:
        main(["train", recipe, *other, "--resume", str(tmp_path / "out" / "checkpoint-1")])
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
