"""The GPU check: TRL 1.16's GOLDTrainer against gold in one run, at the DESIGN §7 shapes, with peak memory, the
model-compute floor and gold's GPU-marked tests; one JSON. Run it through ``benchmarks/gpu_check.sh`` (which installs
carried wheels first) or directly:

    python -m benchmarks.gpu_check [--device cuda|cpu] [--tiny] [--steps N] [--budget-s S] --json OUT

Runs, each on fresh models (initialised on the device): for ``lmbda`` 0 (dataset completions) and 1 (on-policy
rollouts), the hybrid (JSD on matched tokens + ULD on the rest, beta 0.5) and ULD alone, TRL and gold (the loss from
hidden states); for the hybrid, gold twice more: from logits (``gold_logits``, ``loss.hidden_states: never``) and with
the quantized ULD's Triton kernels (``gold_quantized_uld``, ``loss.uld_method: quantized``). A step is the
median wall time between optimizer steps after the first; peak memory is ``torch.cuda.max_memory_allocated`` over
the run (null on CPU: ``tests/gold/losses/test_memory.py`` and ``benchmarks/memory_gpu_path.py`` measure the loss's
memory there). A run that fails is recorded with its error (TRL's on-policy run crashed on the reference H100); runs
left when ``--budget-s`` is spent are recorded as skipped, so the whole check stays under the 10 minutes a GPU
session allows. ``--device cpu --tiny`` is the dry run CI makes.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_trainer import common, llama_for, rows, time_floor, time_gold, time_trl

SHAPES = {
    # DESIGN §7: a Llama-3.2-1B-shaped teacher and a Qwen2.5-0.5B-shaped student (each on its own tokenizer)
    "design": {"student": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                               num_key_value_heads=2),
               "teacher": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                               num_key_value_heads=8)},
    "tiny": {"student": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                             num_key_value_heads=2),
             "teacher": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                             num_key_value_heads=2)},
}  # fmt: skip
LOSSES = {"hybrid": {}, "uld": {"hybrid_weight": 0.0, "uld_weight": 1.0}}


def fresh_models(tokenizers: tuple[Any, Any], shape: str, device: str) -> tuple[Any, Any]:
    """A (student, teacher) pair of random Llamas sized to the tokenizers, initialised on ``device``."""
    return (llama_for(tokenizers[0], SHAPES[shape]["student"], 0, device),
            llama_for(tokenizers[1], SHAPES[shape]["teacher"], 1, device))  # fmt: skip


def measured(run: Any, **kwargs: Any) -> dict[str, Any]:
    """``run(**kwargs)``'s step seconds and the peak memory over it, or the error it raised."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        step = run(**kwargs)
    except Exception as error:  # recorded, not raised: one crashing trainer must not lose the other figures
        return {"error": f"{type(error).__name__}: {str(error)[:300]}"}
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"step_s": step, "peak_memory_gib": peak}


def gpu_tests() -> dict[str, Any]:
    """gold's GPU-marked tests (skipped without CUDA), then the Triton kernel's and the hidden-state loss's tests
    (compiled on a GPU, under the interpreter on CPU): exit code and pytest's summary line of each."""
    runs = {
        "gpu_marked": ["-m", "gpu", "tests"],
        "triton_and_hidden": ["tests/gold/losses/test_triton_jsd.py", "tests/gold/losses/test_hidden.py"],
    }
    out = {}
    for name, args in runs.items():
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        out[name] = {"exit_code": done.returncode, "summary": lines[-1] if lines else done.stderr[-300:]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models, 2 steps of batch 2 (the CPU dry run)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 6; tiny: 3)")
    parser.add_argument("--batch", type=int, default=None, help="prompts per step (default 8; tiny: 2)")
    parser.add_argument("--completion", type=int, default=None, help="max completion tokens (default 64; tiny 8)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="start no run after this many seconds")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the GPU-marked tests")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False); use "
                     "--device cpu --tiny for the dry run")  # fmt: skip
    shape = "tiny" if args.tiny else "design"
    steps = args.steps or (3 if args.tiny else 6)
    batch = args.batch or (2 if args.tiny else 8)
    completion = args.completion or (8 if args.tiny else 64)
    results = run_check(args.device, shape, steps, batch, completion, args.budget_s)
    if not args.skip_tests:
        results["gpu_tests"] = gpu_tests()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(json.dumps(results["ratios"], indent=2))


def run_check(device: str, shape: str, steps: int, batch: int, completion: int, budget_s: float) -> dict[str, Any]:
    from gold.models.chat import set_chat_template
    from gold.models.zoo import load_tokenizer

    began = time.perf_counter()
    # DESIGN §7's pair; Qwen2.5's own template is ChatML (TRL applies the student's template to the rows)
    tokenizers = (set_chat_template(load_tokenizer("qwen2.5"), "chatml"), load_tokenizer("llama-3"))
    data = rows(batch * (steps + 1))
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "shape": shape, "steps": steps, "batch": batch, "completion_tokens": completion,
        "runs": [], "floor_s": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for lmbda in (0.0, 1.0):
            settings = common(Path(tmp) / "out", steps, batch, device)
            plan: list[tuple[str, str, dict[str, Any]]] = []
            for loss, fields in LOSSES.items():
                plan.append(("gold", loss, {**fields, "hidden_states": "always"}))  # = "auto" on CUDA; the dry run too
                if loss == "hybrid":  # the logits path, and the quantized ULD's Triton kernels
                    plan.append(("gold_logits", loss, {**fields, "hidden_states": "never"}))
                    plan.append(("gold_quantized_uld", loss, {**fields, "hidden_states": "always",
                                                              "uld_method": "quantized"}))  # fmt: skip
                plan.append(("trl", loss, fields))
            for trainer, loss, fields in plan:
                entry: dict[str, Any] = {"trainer": trainer, "loss": loss, "lmbda": lmbda, "settings": fields}
                if time.perf_counter() - began > budget_s:
                    entry["skipped"] = f"the {budget_s:g} s budget was spent"
                else:
                    job = dict(models=fresh_models(tokenizers, shape, device), tokenizers=tokenizers, data=data,
                               lmbda=lmbda, settings=settings, completion=completion)  # fmt: skip
                    if trainer.startswith("gold"):
                        entry.update(measured(time_gold, **job, **fields))
                    else:
                        entry.update(measured(time_trl, **job, folder=Path(tmp), hybrid=loss == "hybrid"))
                    del job
                print(json.dumps(entry), flush=True)
                results["runs"].append(entry)
            floor = time_floor(fresh_models(tokenizers, shape, device), tokenizers, batch, 32 + completion, device)
            results["floor_s"][f"lmbda_{lmbda:g}"] = floor
    results["ratios"] = ratios(results)
    results["seconds"] = time.perf_counter() - began
    return results


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Per lmbda and loss: TRL / gold (speed-up), gold / floor, and peak memory gold / TRL, where both ran."""
    out: dict[str, Any] = {}
    runs = results["runs"]
    for lmbda in (0.0, 1.0):
        floor = results["floor_s"].get(f"lmbda_{lmbda:g}")
        for loss in LOSSES:
            gold, trl, logits, quantized = (
                _find(runs, name, loss, lmbda) for name in ("gold", "trl", "gold_logits", "gold_quantized_uld")
            )
            key = f"lmbda_{lmbda:g}/{loss}"
            out[key] = {
                "trl_over_gold": trl["step_s"] / gold["step_s"] if gold and trl else None,
                "gold_over_floor": gold["step_s"] / floor if gold and floor else None,
                "logits_path_over_gold": logits["step_s"] / gold["step_s"] if gold and logits else None,
                "quantized_uld_over_gold": quantized["step_s"] / gold["step_s"] if gold and quantized else None,
                "peak_memory_gold_over_trl": (gold["peak_memory_gib"] / trl["peak_memory_gib"]
                                              if gold and trl and gold["peak_memory_gib"] else None),
            }  # fmt: skip
    return out


def _find(runs: list[dict[str, Any]], trainer: str, loss: str, lmbda: float) -> dict[str, Any]:
    """The run of ``trainer`` (gold, gold_logits, gold_quantized_uld, trl) that measured a step, or {}."""
    return next((r for r in runs if (r["trainer"], r["loss"], r["lmbda"]) == (trainer, loss, lmbda) and "step_s" in r),
                {})  # fmt: skip


if __name__ == "__main__":
    main()
