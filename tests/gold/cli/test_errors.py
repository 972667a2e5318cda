"""Bad input through the command line: every case exits 2 with one line that names the bad value, before any
training or scoring starts (issue 14, item 6). Each row: a name, the argv (built in a scratch folder), and the text
the one line must contain."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gold.cli import main
from tests.gold.cli.bad_input import (
    BAD_RECIPES,
    CSV_FIELDS,
    CSV_QUOTE,
    TINY,
    _blocker,
    _checkpoint,
    _cut,
    _data,
    _data_at,
    _folder,
    _fsdp_launch_on_cpu,
    _hub,
    _long_third_prompt,
    _no_wandb,
    _own_folder,
    _run,
    _teachers,
    _train,
    _write,
)
from tests.gold.cli.test_commands import _recipe
from tests.gold.conftest import ROWS
from tests.gold.teacher.fake_server import closed_port, fake_teacher_url

CASES = {
    # recipes and overrides
    **{
        f"recipe: {name}": (lambda t, c=c: ["train", str(_write(t / "r.yaml", c))], m)
        for name, (c, m) in BAD_RECIPES.items()
    },
    "recipe missing": (lambda t: ["train", str(t / "none.yaml")], "none.yaml' does not exist"),
    "override syntax": (lambda t: _train(t, "loss.beta=[0.1"), "override 'loss.beta=[0.1'"),
    "temperature 1e-45": (lambda t: _train(t, "loss.teacher_temperature=1e-45"), "teacher_temperature must be in"),
    "weight inf": (lambda t: _train(t, "loss.hybrid_weight=.inf"), "hybrid_weight must be a finite number"),
    "learning rate 1e30": (lambda t: _train(t, "training.learning_rate=1e30"), "learning_rate must be a number in"),
    "sampling temperature": (lambda t: _train(t, "rollout.temperature=1e-9"), "temperature must be 0 (greedy) or in"),
    "reward_funcs a string": (
        lambda t: _train(t, "loss.opd_weight=1", "loss.reward_funcs=examples.rewards:names_the_answer"),
        "reward_funcs must be a list of 'module:function' names, got 'examples.rewards:names_the_answer'",
    ),
    "output_dir null": (lambda t: _train(t, "training.output_dir=null"), "output_dir must be a folder path, got None"),
    "output_dir a number": (lambda t: _train(t, "training.output_dir=5"), "output_dir must be a folder path, got 5"),
    "output_dir empty": (lambda t: _train(t, 'training.output_dir=""'), "output_dir must be a folder path, got ''"),
    # data
    "data empty": (lambda t: _data(t, "\n\n"), "bad.jsonl' is empty"),
    "data json error line": (lambda t: _data(t, '{"prompt": "a", "completion": "b"}\n\n{"prompt": \n'), "line 3: not"),
    "data prompt type": (lambda t: _data(t, '{"prompt": 5, "completion": "b"}\n'), "'prompt' must be a string"),
    "data no role": (lambda t: _data(t, '{"messages": [{"content": "hi"}]}\n'), "line 1: message 0 has no role"),
    "data unknown role": (
        lambda t: _data(t, '{"messages": [{"role": "wizard", "content": "a"}, {"role": "assistant", "content": "b"}]}'),
        "role 'wizard'",
    ),
    "data not utf-8": (lambda t: _data(t, b'{"prompt": "caf\xe9", "completion": "b"}\n'), "not UTF-8 text (byte 0xe9"),
    "data not utf-8, line 2": (
        lambda t: _data(t, b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n'),
        "bad.jsonl' line 2: not UTF-8 text (byte 0xe9 at offset 50)",
    ),
    "data csv fields": (
        lambda t: _train(t, f"data.path={_write(t / 'bad.csv', CSV_FIELDS)}"),
        "bad.csv line 3: 3 fields, the header has 2",
    ),
    "data csv quote": (
        lambda t: _train(t, f"data.path={_write(t / 'bad.csv', CSV_QUOTE)}"),
        "bad.csv line 2: not valid CSV",
    ),
    "data a list row": (lambda t: _data(t, "[1, 2]\n"), "line 1: a row must be an object"),
    "prompt over the limit, third row": (
        lambda t: _train(t, "rollout.max_prompt_length=12", f"data.path={_long_third_prompt(t)}"),
        "long.jsonl line 3: the student prompt has",
    ),
    # several teachers (issue 31)
    "teacher and teachers": (
        lambda t: _teachers(t, extra=f"teacher: {TINY % 'mistral-v1'}\n"),
        "the recipe has both teacher: and teachers:",
    ),
    "teachers empty": (lambda t: _teachers(t, "teachers: {}\n"), "teachers must be a non-empty mapping"),
    "teacher_weights unknown id": (
        lambda t: _teachers(t, extra="teacher_weights: {mistral: 1, llama: 1}\n"),
        "teacher_weights names 'llama', which is not a teacher; the teachers are 'mistral', 'qwen'",
    ),
    "teacher_weights negative": (
        lambda t: _teachers(t, extra="teacher_weights: {mistral: -1, qwen: 1}\n"),
        "teacher_weights['mistral'] must be a finite number >= 0, got -1",
    ),
    "teacher_weights all zero": (
        lambda t: _teachers(t, extra="teacher_weights: {mistral: 0, qwen: 0.0}\n"),
        "teacher_weights are all 0",
    ),
    "row names an unknown teacher": (
        lambda t: _teachers(t, routes=("mistral", "qwen", "llama")),
        "routed.jsonl line 3) names teacher 'llama'; each row's teacher_id (data.teacher_field) must be one of",
    ),
    "row names no teacher": (lambda t: _teachers(t, routes=("qwen", None)), "routed.jsonl line 2) names no teacher"),
    # outputs, checkpoints, model folders
    "output_dir unwritable": (
        lambda t: _train(t, f"training.output_dir={_blocker(t) / 'out'}"),
        "training.output_dir",
    ),
    "output_dir is the student's model folder": (
        lambda t: _train(t, f"student.model={_own_folder(t)}", "student.tiny={}", f"training.output_dir={t / 'model'}"),
        "holds model weights",
    ),
    "output_dir holds a tokenizer": (
        lambda t: _train(t, f"training.output_dir={_folder(t, weights=False, tokenizer=True)}"),
        "holds a tokenizer",
    ),
    "output_dir holds the data": (
        lambda t: _train(t, f"data.path={_write(t / 'out' / 'rows.jsonl', json.dumps(ROWS[0]))}"),
        "holds data.path",
    ),
    "output_dir with ESC and BEL": (
        lambda t: _train(t, f'training.output_dir="{t}/\\e[31mred\\a"', "--resume", "latest"),
        "holds no whole checkpoint",
    ),
    "data path with ESC and BEL": (
        lambda t: _data_at(t, "\x1b]0;title\x07.jsonl", '{"prompt": \n'),
        "line 1: not valid JSON",
    ),
    "resume missing folder": (lambda t: _train(t, "--resume", str(t / "nowhere")), "nowhere: no such folder"),
    "resume not a checkpoint": (
        lambda t: _train(t, "--resume", str(_write(t / "ck" / "x.txt", "").parent)),
        "not a whole checkpoint",
    ),
    "resume latest, no checkpoint": (lambda t: _train(t, "--resume", "latest"), "holds no whole checkpoint"),
    # damaged checkpoints, resumes that would not continue their run (issue 29, items 6 and 7)
    "resume weights cut short": (
        lambda t: _train(t, "--resume", str(_cut(_run(t), "model.safetensors"))),
        "not a whole checkpoint (model.safetensors has",
    ),
    "resume optimizer cut short": (
        lambda t: _train(t, "--resume", str(_cut(_run(t), "optimizer.pt"))),
        "not a whole checkpoint (optimizer.pt has",
    ),
    "resume trainer state not json": (
        lambda t: _train(t, "--resume", str(_cut(_run(t), "trainer_state.json"))),
        "trainer_state.json is not valid JSON",
    ),
    "resume latest, every checkpoint damaged": (
        lambda t: _train(_cut(_run(t), "model.safetensors").parents[1], "--resume", "latest"),  # parents[1]: t
        "checkpoint-1 (model.safetensors has",
    ),
    "resume another run's recipe": (
        lambda t: _train(t, "--resume", str(_run(t, folder="other", overrides=("loss.beta=0.2",)))),
        "differs from the checkpoint's (saved in it) in loss.beta (0.2 → 0.5)",
    ),
    "resume at max_steps": (
        lambda t: _train(t, "--resume", str(_run(t, step=2))),
        "checkpoint is at step 2 and training.max_steps is 2",
    ),
    "resume without scheduler state": (
        lambda t: _train(t, "--resume", str(_cut(_run(t), "-scheduler.pt"))),
        "has no scheduler.pt",
    ),
    "student folder without weights": (
        lambda t: _train(t, f"student.model={_folder(t, weights=False, tokenizer=True)}", "student.tiny={}"),
        "holds no weights",
    ),
    "tokenizer folder without files": (
        lambda t: _train(t, f"student.tokenizer={_folder(t, weights=True, tokenizer=False)}"),
        "holds no tokenizer",
    ),
    # gold eval
    "eval --json is a folder": (
        lambda t: ["eval", "--data", str(_recipe(t).parent / "rows.jsonl"), "--teacher", "tiny-x", "--json", str(t)],
        "--json",
    ),
    "eval --plot unwritable": (
        lambda t: ["eval", "--data", "d.jsonl", "--checkpoints", str(t), "--plot", str(_blocker(t) / "p.png")],
        "--plot",
    ),
    "eval --plot format": (
        lambda t: ["eval", "--data", "d", "--checkpoints", str(_checkpoint(t).parent), "--plot", str(t / "p.xyz")],
        "matplotlib writes no '.xyz' files",
    ),
    "eval row numbers": (
        lambda t: ["eval", "--data", str(_write(t / "e.jsonl", f"{json.dumps(ROWS[0])}\n{{}}\n")), "--teacher", "x"],
        "e.jsonl line 2 has fields []",
    ),
    "eval --limit 0": (lambda t: ["eval", "--data", "d.jsonl", "--limit", "0"], "--limit: must be >= 1, got 0"),
    "eval --batch-size": (lambda t: ["eval", "--data", "d", "--batch-size", "-2"], "--batch-size: must be >= 1"),
    "eval missing data": (
        lambda t: ["eval", "--data", str(t / "no.jsonl"), "--teacher", "smollm2-135m-instruct"],
        "--data '",
    ),
    "eval checkpoints missing": (
        lambda t: ["eval", "--data", "d.jsonl", "--checkpoints", str(t / "run")],
        "run' is not a folder",
    ),
    "eval checkpoints all damaged": (
        lambda t: ["eval", "--data", "d.jsonl", "--checkpoints", str(_cut(_run(t), "model.safetensors").parent)],
        "out holds no whole checkpoint: ",
    ),
    "eval student without weights": (
        lambda t: ["eval", "--data", "d.jsonl", "--student", str(_folder(t, weights=False, tokenizer=True))],
        "holds no weights",
    ),
    # gold align, gold demo
    "align --file missing": (
        lambda t: ["align", "--student", "qwen2.5", "--teacher", "llama-3", "--file", str(t / "none.txt")],
        "none.txt' does not exist",
    ),
    "align --file folder": (
        lambda t: ["align", "--student", "qwen2.5", "--teacher", "llama-3", "--file", str(t)],
        "is a folder",
    ),
    "align --file not utf-8": (
        lambda t: ["align", "--student", "qwen2.5", "--teacher", "llama-3", "--file", str(_write(t / "l", b"\xff"))],
        "not UTF-8 text (byte 0xff",
    ),
    "align --html unwritable": (
        lambda t: ["align", "--student", "qwen2.5", "--teacher", "llama-3", "x", "--html", str(_blocker(t) / "a.html")],
        "--html",
    ),
    "align --max-groups 0": (
        lambda t: ["align", "--student", "q", "--teacher", "l", "x", "--max-groups", "0"],
        "--max-groups: must be >= 1, got 0",
    ),
    "demo --steps 0": (lambda t: ["demo", "--steps", "0"], "--steps: must be >= 1, got 0"),
    "demo --out unwritable": (lambda t: ["demo", "--out", str(_blocker(t) / "demo")], "--out"),
    "demo --alignment-only --out unwritable": (
        lambda t: ["demo", "--alignment-only", "--out", str(_blocker(t) / "demo")],
        "--out",
    ),
    # a served teacher, checked before any model loads (tests/gold/teacher/fake_server.py stands in for vLLM)
    "served teacher: no server": (
        lambda t: _train(t, f"teacher.server_url=http://127.0.0.1:{closed_port()}"),
        "no vLLM server answered at http://127.0.0.1:",
    ),
    "served teacher: no such host": (
        lambda t: _train(t, "teacher.server_url=http://gold-no-such-host.invalid:8002"),
        "no vLLM server answered at http://gold-no-such-host.invalid:8002/health",
    ),
    "served teacher with seq_kd": (
        lambda t: _train(t, "teacher.server_url=http://127.0.0.1:9", "rollout.seq_kd=true"),
        "rollout.seq_kd samples from the teacher, and the teacher at http://127.0.0.1:9 is served for its log-probs",
    ),
    "served teacher: another tokenizer": (
        lambda t: _train(t, f"teacher.server_url={fake_teacher_url('mismatch')}"),
        "whose tokenizer encodes a probe text differently from the teacher tokenizer given here",
    ),
    "served teacher: NaN rows": (
        lambda t: _train(t, f"teacher.server_url={fake_teacher_url('nan')}"),
        "/nan answered log-probability nan",
    ),
    # integrations, refused before any model loads (issue 30, item 5); SETUP below makes each machine state
    "report_to wandb, not installed": (
        lambda t: _train(t, "training.report_to=[wandb]"),
        "training.report_to: [wandb] needs wandb, which is not installed: pip install 'gold-distill[wandb]'",
    ),
    "push_to_hub without a token": (
        lambda t: _train(t, "training.push_to_hub=true"),
        "training.push_to_hub needs a Hugging Face token, and none is set: run `hf auth login` or set HF_TOKEN",
    ),
    "push_to_hub, hub unreachable": (
        lambda t: _train(t, "training.push_to_hub=true"),
        "training.push_to_hub is set, and the hub at http://127.0.0.1:",
    ),
    "push_to_hub offline": (lambda t: _train(t, "training.push_to_hub=true"), "HF_HUB_OFFLINE=1 keeps this run off"),
    "accelerate FSDP config without GPUs": (
        lambda t: _train(t),
        "the accelerate config asks for FSDP (ACCELERATE_USE_FSDP=true), which accelerate runs on GPUs only",
    ),
}


# the machine state a case needs (never the network: the hub is a closed local port)
SETUP = {
    "report_to wandb, not installed": _no_wandb,
    "push_to_hub without a token": lambda mp: _hub(mp, token=None),
    "push_to_hub, hub unreachable": lambda mp: _hub(
        mp, token="hf_gold_test", endpoint=f"http://127.0.0.1:{closed_port()}"
    ),
    "push_to_hub offline": lambda mp: _hub(mp, token="hf_gold_test", offline=True),
    "accelerate FSDP config without GPUs": _fsdp_launch_on_cpu,
}


# the bad path itself must be named in these messages
NAMES_THE_PATH = {"output_dir unwritable": "blocker/out", "eval --plot unwritable": "blocker",
                  "align --html unwritable": "blocker", "demo --out unwritable": "blocker/demo",
                  "demo --alignment-only --out unwritable": "blocker/demo"}  # fmt: skip
# names with control characters: the line shows them escaped (issue 29, item 10)
ESCAPED = {"output_dir with ESC and BEL": "/\\x1b[31mred\\x07",
           "data path with ESC and BEL": "/\\x1b]0;title\\x07.jsonl"}  # fmt: skip
# and these the fix
NAMES_THE_FIX = {"served teacher: no server": "gold vllm-serve", "served teacher: no such host": "gold vllm-serve",
                 "served teacher: another tokenizer": "set teacher.tokenizer",
                 "served teacher: NaN rows": "not from training",
                 "push_to_hub, hub unreachable": "set training.push_to_hub=false",
                 "accelerate FSDP config without GPUs": "--multi_gpu"}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line_naming_it(name, tmp_path, capsys, monkeypatch) -> None:
    import gold.cli.commands
    import gold.cli.run
    import gold.evaluation.run

    build, expected = CASES[name]
    argv = build(tmp_path)
    SETUP.get(name, lambda mp: None)(monkeypatch)

    def no_model(*args, **kwargs):
        raise AssertionError(f"{name}: a model loaded before the bad input was refused")

    monkeypatch.setattr(gold.cli.run, "build_model", no_model)  # gold train
    monkeypatch.setattr(gold.evaluation.run, "load_scored_model", no_model)  # gold eval
    monkeypatch.setattr(gold.cli.commands, "demo_main", no_model)  # gold demo
    monkeypatch.setattr(gold.cli.commands, "_load", no_model)  # gold align, gold demo --alignment-only
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2, exit_info.value
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("gold"), lines[0]
    assert expected in lines[0], lines[0]
    if name in NAMES_THE_PATH:
        assert f"{tmp_path}/{NAMES_THE_PATH[name]}'" in lines[0], lines[0]
    if name in ESCAPED:
        assert ESCAPED[name] in lines[0], lines[0]
    assert "\x1b" not in lines[0] and "\x07" not in lines[0], lines[0]  # a raw ESC or BEL drives the terminal
    assert NAMES_THE_FIX.get(name, "") in lines[0], lines[0]


def test_a_refused_yaml_tag_is_one_line_from_the_console_script(tmp_path) -> None:
    """The whole process, not just ``main``: no traceback reaches the terminal, and the tag's command never runs."""
    marker = tmp_path / "ran"
    recipe = _write(tmp_path / "r.yaml", f"student: !!python/object/apply:os.system ['touch {marker}']\n")
    done = subprocess.run([sys.executable, "-m", "gold.cli", "train", str(recipe)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "python/object/apply" in lines[0] and "Traceback" not in done.stderr
    assert not marker.exists()


def test_jsonl_splits_on_newlines_only_and_names_a_bom(tmp_path) -> None:
    """U+2028 inside a JSON string is text, not a line break; a byte-order mark is dropped with a warning."""
    from gold.data.files import read_rows

    rows = [{"prompt": "a\u2028b", "completion": "c\u2029d"}, ROWS[0]]
    path = _write(tmp_path / "rows.jsonl", "\ufeff" + "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    with pytest.warns(UserWarning, match="byte-order mark"):
        read = read_rows(path)
    assert list(read) == rows and read.labels == [f"{path} line 1", f"{path} line 2"]


def test_overwrite_saves_over_a_model_folder_and_a_run_folder_is_not_foreign(tmp_path) -> None:
    """A model folder as training.output_dir is refused unless --overwrite (issue 29, item 5); a finished run's
    folder holds weights and a tokenizer too, and stays the run's (--resume goes on with it)."""
    from gold.cli.guard import RUN_FILE, prepare_output_dir
    from gold.cli.recipe import RecipeError

    recipe = {"data": {"path": str(tmp_path / "rows.jsonl"), "eval_path": None}}
    _write(tmp_path / "model" / "model.safetensors", b"")
    with pytest.raises(RecipeError, match="holds model weights"):
        prepare_output_dir(tmp_path / "model", recipe, resume=None, overwrite=False)
    prepare_output_dir(tmp_path / "model", recipe, resume=None, overwrite=True)
    _write(tmp_path / "model" / RUN_FILE, json.dumps({"recipe": recipe}))
    prepare_output_dir(tmp_path / "model", recipe, resume="latest", overwrite=False)


def test_printed_paths_are_escaped(tmp_path, capsys) -> None:
    """A path gold prints after the work (here the HTML view's) shows ESC and BEL escaped (issue 29, item 10)."""
    page = tmp_path / "\x1b]0;title\x07.html"
    assert main(["align", "--student", "qwen2.5", "--teacher", "llama-3", "12345", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert page.is_file() and "\\x1b]0;title\\x07.html" in out and "\x1b" not in out and "\x07" not in out
