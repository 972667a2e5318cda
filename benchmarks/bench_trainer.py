"""GoldTrainer vs TRL 1.16's GOLDTrainer: seconds per optimizer step, same models, data and settings.

    python -m benchmarks.bench_trainer [--device cpu|cuda] [--json OUT] [--steps N] [--vllm]

Both trainers distil the same teacher (Llama-3 tokenizer) into copies of the same student (SmolLM2
tokenizer) — TRL's cross-tokenizer path accepts byte-level BPE pairs only — with the GOLD hybrid loss
(JSD on matched tokens + ULD on the rest), for ``lmbda`` 0 (dataset completions) and 1 (on-policy
rollouts). The floor is the model compute alone: a teacher forward plus a student forward+backward on
a batch of the same shape. A step is the wall time between two consecutive optimizer steps (rollouts,
alignment, forwards, loss, backward, optimizer), median over the steps after the first.

``--vllm`` adds, in the same run, gold on-policy with vLLM rollouts (colocated engine, weights pushed every step)
and the sampling throughput of the student alone, vLLM vs HF ``generate`` (needs vLLM and TRL in one environment:
``make install-vllm`` builds ``.venv-vllm`` with both).

CPU: tiny random models sized to the real vocabularies (head size 32: vLLM's CPU attention needs >= 32). CUDA:
DESIGN §7 shapes (Llama-3.2-1B-shaped teacher, Qwen2.5-0.5B-shaped student in bf16) with ``--shape design``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank, then rests under an old oak tree."


def rows(count: int) -> list[dict[str, Any]]:
    """Conversational rows with ~60-token completions."""
    return [{"messages": [{"role": "user", "content": f"Tell me story number {i}."},
                          {"role": "assistant", "content": f"Story {i}: {SENTENCE} {SENTENCE[::-1][:80]}"}]}
            for i in range(count)]  # fmt: skip


def model_for(tokenizer: Any, shape: str, seed: int) -> Any:
    sizes = {"tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=2),
             "design": dict(hidden_size=1536, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=16,
                            num_key_value_heads=8)}[shape]  # fmt: skip
    return llama_for(tokenizer, sizes, seed)


def llama_for(tokenizer: Any, sizes: dict[str, int], seed: int, device: str = "cpu") -> Any:
    """A random Llama of ``sizes`` with ``tokenizer``'s vocabulary (tied embeddings), initialised on ``device``."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **sizes)  # fmt: skip
    with torch.device(device):
        return LlamaForCausalLM(config)


class StepClock(TrainerCallback):
    """Wall time between consecutive optimizer steps."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.marks.append(time.perf_counter())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.marks.append(time.perf_counter())

    def median_step(self) -> float:
        steps = [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return statistics.median(steps[1:] if len(steps) > 1 else steps)


def common(out: Path, steps: int, batch: int, device: str) -> dict[str, Any]:
    return dict(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-4,
                report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=device == "cpu",
                bf16=device == "cuda", seed=0)  # fmt: skip


def time_gold(models: tuple[Any, Any], tokenizers: tuple[Any, Any], data: list[dict], lmbda: float,
              settings: dict[str, Any], completion: int, use_vllm: bool = False, **loss: Any) -> float:  # fmt: skip
    """Median seconds per step of GoldTrainer (``loss``: LossConfig fields besides beta 0.5)."""
    from transformers import TrainingArguments

    from gold.config import LossConfig, RolloutConfig
    from gold.training.trainer import GoldTrainer

    clock = StepClock()
    rollout = RolloutConfig(
        lmbda=lmbda,
        max_completion_length=completion,
        temperature=0.9,
        use_vllm=use_vllm,
        vllm_gpu_memory_utilization=0.3,
    )  # CUDA: leave the rest of the GPU to training
    trainer = GoldTrainer(models[0], models[1], args=TrainingArguments(**settings), train_dataset=data,
                          student_tokenizer=tokenizers[0], teacher_tokenizer=tokenizers[1], callbacks=[clock],
                          loss=LossConfig(beta=0.5, **loss), rollout=rollout)  # fmt: skip
    trainer.train()
    return clock.median_step()


def time_trl(models: tuple[Any, Any], tokenizers: tuple[Any, Any], data: list[dict], lmbda: float,
             settings: dict[str, Any], completion: int, folder: Path, hybrid: bool = True) -> float:  # fmt: skip
    """Median seconds per step of TRL's GOLDTrainer, ULD with the hybrid (``hybrid``) or alone."""
    from datasets import Dataset
    from trl.experimental.gold import GOLDConfig, GOLDTrainer

    for model, tokenizer, name in ((models[0], tokenizers[0], "student"), (models[1], tokenizers[1], "teacher")):
        tokenizer.save_pretrained(folder / name)  # TRL reads the teacher tokenizer from a path
        model.config.save_pretrained(folder / name)
        model.config._name_or_path = str(folder / name)
    clock = StepClock()
    args = GOLDConfig(**settings, use_uld_loss=True, uld_use_hybrid_loss=hybrid, beta=0.5, lmbda=lmbda,
                      teacher_tokenizer_name_or_path=str(folder / "teacher"), max_completion_length=completion,
                      temperature=0.9)  # fmt: skip
    trainer = GOLDTrainer(model=models[0], teacher_model=models[1], args=args, train_dataset=Dataset.from_list(data),
                          processing_class=tokenizers[0], callbacks=[clock])  # fmt: skip
    trainer.train()
    return clock.median_step()


def time_floor(models: tuple[Any, Any], tokenizers: tuple[Any, Any], batch: int, length: int, device: str) -> float:
    """Teacher forward (no grad) + student forward+backward on (batch, length) ids, median of 5."""
    student, teacher = (m.to(device) for m in models)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    s_ids = torch.randint(0, len(tokenizers[0]), (batch, length), device=device)
    t_ids = torch.randint(0, len(tokenizers[1]), (batch, length), device=device)
    times = []
    for _ in range(6):
        start = time.perf_counter()
        with torch.autocast(device_type=device, dtype=dtype, enabled=device == "cuda"):
            with torch.no_grad():
                teacher(input_ids=t_ids)
            student(input_ids=s_ids).logits.float().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    student.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


def sampling_throughput(student: Any, tokenizer: Any, prompts: int, completion: int) -> dict[str, float]:
    """Completion tokens per second of the student alone: HF ``generate`` vs a colocated vLLM engine, same prompts
    (one call of ``prompts`` prompts each, median of 3 after a warm-up); and the engine's start-up seconds."""
    from gold.config import RolloutConfig
    from gold.data.examples import prompt_ids
    from gold.rollout import HFGenerator
    from gold.rollout.vllm import VLLMGenerator

    config = RolloutConfig(temperature=0.9, max_completion_length=completion, use_vllm=True)
    batch = [prompt_ids(tokenizer, row["messages"][:1]) for row in rows(prompts)]
    start = time.perf_counter()
    engine = VLLMGenerator(student, tokenizer, config)
    startup = time.perf_counter() - start
    out = {"vllm_startup_s": startup}
    for name, generator in (("hf", HFGenerator(student, tokenizer, config)), ("vllm", engine)):
        rates = []
        for _ in range(4):
            start = time.perf_counter()
            tokens = sum(len(r.ids) for r in generator.rollout(batch, seeds=range(len(batch))))
            rates.append(tokens / (time.perf_counter() - start))
        out[f"{name}_tokens_per_s"] = statistics.median(rates[1:])
    engine.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=["tiny", "design"], default="tiny")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--completion", type=int, default=64, help="max completion tokens (on-policy)")
    parser.add_argument("--vllm", action="store_true", help="add gold+vLLM on-policy and vLLM vs HF sampling rows")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from gold.models.zoo import load_tokenizer

    tokenizers = (load_tokenizer("smollm2"), load_tokenizer("llama-3"))
    data = rows(args.batch * (args.steps + 1))
    results: dict[str, Any] = {"device": args.device, "shape": args.shape, "batch": args.batch,
                               "completion_tokens": args.completion, "steps": args.steps}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for lmbda in (0.0, 1.0):
            settings = common(Path(tmp) / "out", args.steps, args.batch, args.device)

            def fresh() -> tuple[Any, Any]:
                return model_for(tokenizers[0], args.shape, 0), model_for(tokenizers[1], args.shape, 1)

            gold_s = time_gold(fresh(), tokenizers, data, lmbda, settings, args.completion)
            trl_s = time_trl(fresh(), tokenizers, data, lmbda, settings, args.completion, Path(tmp))
            floor_s = time_floor(fresh(), tokenizers, args.batch, 32 + args.completion, args.device)
            results[f"lmbda_{lmbda:g}"] = {"gold_step_s": gold_s, "trl_step_s": trl_s, "floor_s": floor_s,
                                           "speedup": trl_s / gold_s, "gold_over_floor": gold_s / floor_s}  # fmt: skip
            print(f"lmbda={lmbda:g}: gold {gold_s:.3f} s/step, TRL {trl_s:.3f} s/step ({trl_s / gold_s:.1f}×), "
                  f"floor {floor_s:.3f} s (gold {gold_s / floor_s:.1f}× floor)", flush=True)  # fmt: skip
            if lmbda == 1.0 and args.vllm:
                vllm_s = time_gold(fresh(), tokenizers, data, lmbda, settings, args.completion, use_vllm=True)
                results["lmbda_1"].update(gold_vllm_step_s=vllm_s, vllm_speedup_over_trl=trl_s / vllm_s,
                                          vllm_speedup_over_gold_hf=gold_s / vllm_s)  # fmt: skip
                print(f"lmbda=1 with vLLM: gold {vllm_s:.3f} s/step ({trl_s / vllm_s:.1f}× TRL, "
                      f"{gold_s / vllm_s:.1f}× gold+HF)", flush=True)  # fmt: skip
        if args.vllm:
            results["sampling"] = sampling_throughput(fresh()[0], tokenizers[0], args.batch * 4, args.completion)
            print(f"sampling: {results['sampling']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
