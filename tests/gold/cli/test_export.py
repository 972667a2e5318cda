"""A LoRA run on the command line: ``gold train`` with ``student.peft`` checkpoints the adapter, ``--resume latest``
continues it, and ``gold export --merge`` writes a folder that plain ``AutoModelForCausalLM.from_pretrained`` loads
as the trained student."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from gold.cli import main
from gold.models.build import tiny_model
from tests.conftest import zoo
from tests.gold.cli.test_commands import _recipe

peft = pytest.importorskip("peft")
PEFT = "student.peft={r: 4, alpha: 8, target_modules: [q_proj, v_proj, down_proj]}"


def base_folder(tmp_path):
    """A student start saved as a model folder, as a real run's is (the adapter records it as its base)."""
    tokenizer = zoo("smollm2")
    folder = tmp_path / "start"
    tiny_model(tokenizer, seed=0, hidden_size=16, layers=1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_train_resume_and_export_a_lora_student(tmp_path, capsys) -> None:
    recipe, start = str(_recipe(tmp_path)), base_folder(tmp_path)
    run = [recipe, PEFT, f"student.model={start}", "student.tiny={}", "training.save_steps=2"]
    assert main(["train", *run]) == 0
    assert main(["train", *run, "training.max_steps=4", "--resume", "latest"]) == 0
    checkpoint, out = tmp_path / "out" / "checkpoint-4", tmp_path / "merged"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()
    assert main(["export", "--merge", str(checkpoint), str(out)]) == 0
    assert "merged into" in capsys.readouterr().out
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name in plain.state_dict())
    # the reference: peft's own merge of the same checkpoint into the same start
    reference = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(start), checkpoint)
    assert any(float(p.abs().max()) > 0 for n, p in reference.named_parameters() if "lora_B" in n)  # it trained
    reference = reference.merge_and_unload()
    ids = torch.randint(0, 49152, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)
    assert (out / "tokenizer.json").is_file()
    adapter_only = r"holds a LoRA adapter, not a model; write the merged model with `gold export --merge"
    with pytest.raises(SystemExit, match=adapter_only):  # gold eval names the way to a model folder
        main(["eval", "--data", str(tmp_path / "rows.jsonl"), "--student", str(checkpoint)])


def test_export_refuses_what_it_cannot_merge(tmp_path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    with pytest.raises(SystemExit, match=r"holds no adapter_config\.json: not a LoRA checkpoint"):
        main(["export", "--merge", str(full), str(tmp_path / "out")])
    (full / "adapter_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"names no base model.*give --base MODEL"):
        main(["export", "--merge", str(full), str(tmp_path / "out")])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("", encoding="utf-8")
    with pytest.raises(SystemExit, match="exists and is not an empty folder"):
        main(["export", "--merge", str(full), str(tmp_path / "taken")])
