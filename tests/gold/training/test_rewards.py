"""Task rewards for OPD-RL (issue 17, item 2): TRL GRPO's reward signature and group-normalised advantages; bad
reward functions are named."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from gold import GoldTrainer
from gold.config import LossConfig, RolloutConfig
from gold.training.rewards import RewardError, compute_rewards, group_advantages, load_reward_funcs
from tests.gold.conftest import tiny, training_args


def _trl_advantages(rewards_per_func: torch.Tensor, weights: torch.Tensor, num_generations: int) -> torch.Tensor:
    """TRL 1.16 GRPOTrainer's default path (sum_then_normalize, scale_rewards="group"), with TRL's own nanstd.

    TRL computes these inline in ``GRPOTrainer._generate_and_score_completions`` (trl/trainer/grpo_trainer.py,
    1.16.0), which cannot be called alone, so its lines are restated here; the version check makes an upgrade of the
    pinned TRL fail here until the restatement is compared with the new source."""
    import trl
    from trl.trainer.utils import nanstd

    assert trl.__version__ == "1.16.0", f"re-check this restatement against TRL {trl.__version__}'s GRPOTrainer"

    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable] = torch.nan
    mean = torch.nanmean(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations, dim=0)
    std = nanstd(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations, dim=0)
    return torch.nan_to_num((rewards - mean) / (std + 1e-4), nan=0.0)


@pytest.mark.parametrize("seed", range(5))
def test_advantages_equal_trls_group_normalised_advantages(seed) -> None:
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randn(24, 3, generator=generator, dtype=torch.float64)
    rewards[torch.rand(24, 3, generator=generator) < 0.2] = math.nan  # some functions cannot score some rows
    rewards[5] = math.nan  # a completion nobody can score
    rewards[8:12, :] = 1.0  # a group where every completion is equally good: advantage 0
    weights = [0.5, 1.0, 2.0]
    ours = group_advantages(rewards, 4, weights)
    torch.testing.assert_close(ours, _trl_advantages(rewards, torch.tensor(weights, dtype=torch.float64), 4))
    assert ours[5] == 0 and torch.count_nonzero(ours[8:12]) == 0


def test_bad_reward_functions_are_named() -> None:
    with pytest.raises(RewardError, match=r"must look like 'package\.module:function'"):
        load_reward_funcs(["no_colon"])
    with pytest.raises(RewardError, match="no module 'no_such_module_xyz' on the path"):
        load_reward_funcs(["no_such_module_xyz:reward"])
    with pytest.raises(RewardError, match="'math' has no function 'nope'"):
        load_reward_funcs(["math:nope"])
    assert load_reward_funcs(["math:fabs"]) == [math.fabs]

    def short(prompts, completions, **columns):
        return [1.0]

    def infinite(prompts, completions, **columns):
        return [math.inf for _ in completions]

    with pytest.raises(RewardError, match="'short' returned 1 rewards for 2 completions"):
        compute_rewards([short], ["p", "p"], ["a", "b"], {})
    with pytest.raises(RewardError, match="'infinite' returned inf for completion 1 of 2;"):
        compute_rewards([infinite], ["p", "p"], ["a", "b"], {})


def test_a_reward_that_raises_is_named_with_the_row() -> None:
    """Issue 29, item 9: the function, its error and the row it failed on (counted from 1, with the row's file and
    line), not a bare traceback from inside the training step."""

    def fragile(prompts, completions, **columns):
        return [1.0 / (len(c) - 2) for c in completions]

    labels = ["data.jsonl line 1", "data.jsonl line 1", "data.jsonl line 4"]
    with pytest.raises(RewardError, match=r"'fragile' raised ZeroDivisionError: float division by zero on completion "
                       r"2 of 3 \(data\.jsonl line 1\); fix it"):  # fmt: skip
        compute_rewards([fragile], ["p"] * 3, ["abc", "ab", "abcd"], {}, labels=labels)


def _module(folder, name: str, source: str):
    """A module file ``name`` (dots: packages) in ``folder``, whose import leaves ``folder/ran-<name>`` behind."""
    path = folder.joinpath(*name.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    for package in path.relative_to(folder).parents:
        if str(package) != ".":
            (folder / package / "__init__.py").write_text(f"open({str(folder / f'ran-{package}')!r}, 'w').close()\n")
    path.write_text(f"open({str(folder / f'ran-{name}')!r}, 'w').close()\n{source}")
    return folder / f"ran-{name}"


def test_reward_modules_are_checked_before_they_run(tmp_path, monkeypatch) -> None:
    """Issue 29, item 11: a module that does not define the named function is refused from its source, without
    running it or its package; one that does is imported (its code then runs: the trust model of reward_funcs)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names = ("gold_t29_plain", "gold_t29_pkg", "gold_t29_pkg.rewards", "gold_t29_broken")
    try:
        plain = _module(tmp_path, "gold_t29_plain", "def helper(prompts, completions, **kw):\n    return []\n")
        with pytest.raises(RewardError, match=r"defines no 'reward' at its top level; .*\(the module was not imported"):
            load_reward_funcs(["gold_t29_plain:reward"])
        assert not plain.exists()
        nested = _module(tmp_path, "gold_t29_pkg.rewards", "try:\n    from math import fabs as reward\nexcept "
                         "ImportError:\n    def reward(prompts, completions, **kw):\n        return []\n")  # fmt: skip
        with pytest.raises(RewardError, match="defines no 'other'"):
            load_reward_funcs(["gold_t29_pkg.rewards.other"])
        assert not nested.exists() and not (tmp_path / "ran-gold_t29_pkg").exists()
        broken = _module(tmp_path, "gold_t29_broken", "def reward(:\n")
        with pytest.raises(RewardError, match=r"gold_t29_broken\.py is not valid Python"):
            load_reward_funcs(["gold_t29_broken:reward"])
        assert not broken.exists()
        with pytest.raises(RewardError, match="no module 'gold_t29_missing' on the path"):
            load_reward_funcs(["gold_t29_missing:reward"])
        assert load_reward_funcs(["gold_t29_pkg.rewards:reward"]) == [math.fabs] and nested.exists()
    finally:
        for name in names:
            sys.modules.pop(name, None)


def test_rewards_see_the_rows_columns_and_shape_the_advantages(tmp_path, student_tokenizer,
                                                                teacher_tokenizer) -> None:  # fmt: skip
    seen = {}

    def mentions_answer(prompts, completions, answer, **columns):
        seen.update(prompts=prompts, answer=answer)
        return [float(len(c)) for c in completions]  # longer is better: any signal will do

    rows = [{"prompt": f"Q{i}?\n", "completion": "A.", "answer": f"a{i}"} for i in range(4)]
    trainer = GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer, seed=1),
                          args=training_args(tmp_path, max_steps=1, per_device_train_batch_size=2),
                          train_dataset=rows, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                          loss=LossConfig(opd_weight=1.0, opd_alpha=0.0, hybrid_weight=0.0),
                          rollout=RolloutConfig(lmbda=1.0, num_generations=2, max_completion_length=6, temperature=1.0),
                          reward_funcs=[mentions_answer])  # fmt: skip
    torch.manual_seed(0)
    inputs, _ = trainer.get_batch_samples(iter([list(trainer.train_dataset)[:2]]), 1, torch.device("cpu"))
    assert seen["answer"] == ["a0", "a0", "a1", "a1"] and seen["prompts"] == ["Q0?\n", "Q0?\n", "Q1?\n", "Q1?\n"]
    lengths = torch.tensor([float(len(c)) for c in inputs[0]["batch"].completions], dtype=torch.float64)
    torch.testing.assert_close(inputs[0]["advantages"], group_advantages(lengths[:, None], 2))
    trainer.train()
    assert any("rewards/mentions_answer" in entry for entry in trainer.state.log_history)


def test_reward_funcs_need_groups_and_the_opd_term(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    with pytest.raises(ValueError, match="set opd_weight > 0"):
        LossConfig(reward_funcs=["math:fabs"])
    with pytest.raises(ValueError, match=r"rollout.num_generations >= 2 \(got 1\)"):
        GoldTrainer(
            tiny(student_tokenizer),
            tiny(teacher_tokenizer, seed=1),
            args=training_args(tmp_path),
            train_dataset=[{"prompt": "Q\n", "completion": "A"}],
            student_tokenizer=student_tokenizer,
            teacher_tokenizer=teacher_tokenizer,
            loss=LossConfig(opd_weight=1.0, reward_funcs=["math:fabs"]),
        )


def test_opd_needs_rollouts_and_one_weight_per_reward(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    def build(**kwargs):
        loss = kwargs.pop("loss")
        return GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer, seed=1), args=training_args(tmp_path),
                           train_dataset=[{"prompt": "Q\n", "completion": "A"}], student_tokenizer=student_tokenizer,
                           teacher_tokenizer=teacher_tokenizer, loss=loss, **kwargs)  # fmt: skip

    with pytest.raises(ValueError, match=r"rollout\.lmbda is 0 \(none\)"):
        build(loss=LossConfig(opd_weight=1.0), rollout=RolloutConfig(lmbda=0.0))
    with pytest.raises(ValueError, match="reward_weights has 1 weights for 2 reward functions"):
        build(
            loss=LossConfig(opd_weight=1.0, reward_funcs=["math:fabs"], reward_weights=[1.0]),
            rollout=RolloutConfig(lmbda=1.0, num_generations=2),
            reward_funcs=[math.floor],
        )


def test_opd_refuses_stale_rollouts() -> None:
    from gold.training.objectives import check_objectives

    stale = RolloutConfig(lmbda=1.0, use_vllm=True, vllm_sync_frequency=4)
    with pytest.raises(ValueError, match="vllm_sync_frequency is 4: rollouts would come from older weights"):
        check_objectives(LossConfig(hybrid_weight=0.0, opd_weight=1.0), stale, [], given=False)
    check_objectives(LossConfig(), stale, [], given=False)  # the divergence alone does not need ratio 1


@pytest.mark.parametrize("sampling", [
    dict(),  # the default temperature, 0.9
    dict(temperature=0.0),
    dict(temperature=1.0, top_p=0.95),
    dict(temperature=1.0, top_k=50),
], ids=["default", "greedy", "top-p", "top-k"])  # fmt: skip
def test_opd_refuses_rollouts_from_another_policy_than_the_students(tmp_path, student_tokenizer, teacher_tokenizer,
                                                                     sampling) -> None:  # fmt: skip
    """OPD-RL's estimator is unbiased only for samples of the student's own distribution: refused when the trainer is
    built, not at its first step."""
    from gold.training.objectives import check_objectives

    opd, rollout = LossConfig(hybrid_weight=0.0, opd_weight=1.0), RolloutConfig(lmbda=1.0, **sampling)
    said = (rf"rollout.temperature is {rollout.temperature}, top_p {rollout.top_p}, top_k {rollout.top_k}.*"
            r"set rollout.temperature: 1.0, top_p: 1.0, top_k: 0")  # fmt: skip
    with pytest.raises(ValueError, match=said):
        GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer, seed=1), args=training_args(tmp_path),
                    train_dataset=[{"prompt": "Q\n", "completion": "A"}], student_tokenizer=student_tokenizer,
                    teacher_tokenizer=teacher_tokenizer, loss=opd, rollout=rollout)  # fmt: skip
    check_objectives(LossConfig(), rollout, [], given=False)  # the divergence alone is not a policy gradient
    check_objectives(opd, RolloutConfig(lmbda=1.0, temperature=1.0, top_p=1.0, top_k=0), [], given=False)


def _group_logprobs(model, side, groups: torch.Tensor) -> list[torch.Tensor]:
    """Each row's (G_b,) group log-likelihoods, summed token by token from the model's own forward of the row."""
    out = []
    for b in range(side.input_ids.shape[0]):
        ids = side.input_ids[b][side.attention_mask[b].bool()]
        prompt_tokens = int(side.attention_mask[b, : side.prompt_width].sum())
        logprobs = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), dim=-1)
        row_groups = groups[b, 1 : 1 + ids.shape[0] - prompt_tokens]  # loss-view column 1 + j: completion token j
        sums = torch.zeros(int(row_groups.max()) + 1, dtype=torch.float64)
        for j, group in enumerate(row_groups.tolist()):
            if group >= 0:
                sums = sums.index_add(
                    0, torch.tensor([group]), logprobs[prompt_tokens + j - 1, ids[prompt_tokens + j]][None]
                )
        out.append(sums)
    return out


def test_opd_gradient_through_the_trainer_is_reinforce_on_group_likelihoods(tmp_path, student_tokenizer,
                                                                           teacher_tokenizer) -> None:  # fmt: skip
    """compute_loss's gradient equals the hand-written −Σ_g (A_base + α·r_g)·∇log p_S(g) / G, with r_g from each
    model's own forward of the rows (α 0.7, task rewards, 2 completions per prompt)."""

    def longer_is_better(prompts, completions, **columns):
        return [float(len(c)) for c in completions]

    rows = [{"prompt": f"What is {i} plus 2?\n", "completion": "It is."} for i in range(2)]
    trainer = GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer, seed=1),
                          args=training_args(tmp_path, max_steps=1, per_device_train_batch_size=2),
                          train_dataset=rows, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                          loss=LossConfig(opd_weight=1.0, opd_alpha=0.7, hybrid_weight=0.0),
                          rollout=RolloutConfig(lmbda=1.0, num_generations=2, max_completion_length=8, temperature=1.0),
                          reward_funcs=[longer_is_better])  # fmt: skip
    torch.manual_seed(0)
    inputs, items = trainer.get_batch_samples(iter([list(trainer.train_dataset)]), 1, torch.device("cpu"))
    batch, base = inputs[0]["batch"], inputs[0]["advantages"]
    assert batch.source == "student" and base.abs().sum() > 0
    model = trainer.model
    model.zero_grad()
    trainer.compute_loss(model, inputs[0], num_items_in_batch=items).backward()
    ours = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    model.zero_grad()
    student = _group_logprobs(model, batch.student, batch.aligned.student_groups)
    with torch.no_grad():
        teacher = _group_logprobs(trainer.teacher.model, batch.teacher, batch.aligned.teacher_groups)
    total = sum(s.shape[0] for s in student)
    assert total == int(items)
    reference = sum(-((base[b] + 0.7 * (teacher[b] - student[b].detach())) * student[b]).sum()
                    for b in range(len(student))) / total  # fmt: skip
    reference.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name].double(), p.grad.double(), rtol=1e-4, atol=1e-6, msg=name)


def test_gold_train_names_a_raising_reward_its_row_and_the_last_checkpoint(tmp_path, monkeypatch, capsys) -> None:
    """Issue 29, item 9, through the command line: one line with the step, the function, the row and the
    checkpoint to go on from."""
    from gold.cli import main
    from tests.gold.cli.test_commands import _recipe

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "gold_t29_flaky.py").write_text(
        "calls = []\n\ndef flaky(prompts, completions, **columns):\n    calls.append(1)\n"
        "    if len(calls) > 1:\n        raise KeyError('score')\n    return [float(len(c)) for c in completions]\n"
    )
    argv = ["train", str(_recipe(tmp_path)), "loss.opd_weight=1", "loss.hybrid_weight=0", "loss.opd_alpha=0",
            "loss.reward_funcs=[gold_t29_flaky:flaky]", "rollout.lmbda=1", "rollout.num_generations=2",
            "rollout.temperature=1", "training.max_steps=3", "training.save_strategy=steps",
            "training.save_steps=1"]  # fmt: skip
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
    finally:
        sys.modules.pop("gold_t29_flaky", None)
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("gold train: at step 2: reward function 'flaky' raised KeyError: 'score' on completion 1 of")
    assert f"({tmp_path / 'rows.jsonl'} line " in line, line
    assert line.endswith(f"the last whole checkpoint is {tmp_path / 'out' / 'checkpoint-1'}"), line
