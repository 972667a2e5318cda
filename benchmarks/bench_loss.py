"""Loss speed and memory: gold vs TRL 1.16's ULDLoss on the same logits, in the same run.

    python -m benchmarks.bench_loss [--device cpu|cuda] [--batch 8] [--backward-batch 8] [--tokens 256] [--json OUT]

Real tokenizers (llama-3 teacher, qwen2.5 student), tiny random Llama/Qwen2 models sized to their
vocabularies produce the logits once; they are saved and every measurement runs in a fresh process
that loads them, so each peak-memory figure (CPU: peak RSS above the loaded logits, the peak reset
after loading; CUDA: peak allocated) belongs to one loss alone. For ``uld`` and ``hybrid``: gold's
``cross_tokenizer_loss`` (its defaults: the fused kernels with quantized ULD on CPU) and TRL's
``ULDLoss`` (bayesian merge, extended ULD, hybrid on/off): forward and forward+backward on the full
batch (``--backward-batch`` fewer examples for the latter).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from benchmarks.bench_alignment import make_texts

ROOT = Path(__file__).resolve().parents[1]
STUDENT_ROWS, TEACHER_ROWS = 151936, 128256


def build_inputs(batch: int, tokens: int, device: str, out: Path) -> None:
    """Align a batch, run the tiny models once, and save logits + ids + offsets to ``out``."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from alignment import align_texts
    from gold.losses import AlignedBatch, PairTables
    from gold.models.zoo import load_tokenizer

    student, teacher = load_tokenizer("qwen2.5"), load_tokenizer("llama-3")
    texts = [t[: int(tokens * 3.6)] for t in make_texts(batch, tokens, seed=1)]
    alignments = [align_texts(student, teacher, text) for text in texts]
    tables = PairTables.build(student, teacher, student_rows=STUDENT_ROWS, teacher_rows=TEACHER_ROWS)
    prompt_s, prompt_t = [[151644, 872, 198]] * batch, [[128000, 128006, 882, 128007]] * batch
    aligned = AlignedBatch.from_alignments(alignments, tables, student_prefix=prompt_s, teacher_prefix=prompt_t)
    torch.manual_seed(0)
    tiny = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2}  # fmt: skip
    student_model = Qwen2ForCausalLM(Qwen2Config(vocab_size=STUDENT_ROWS, **tiny)).to(device)
    teacher_model = LlamaForCausalLM(LlamaConfig(vocab_size=TEACHER_ROWS, **tiny)).to(device)
    with torch.no_grad():
        student_logits = student_model(aligned.student_ids.to(device)).logits.float().cpu()
        teacher_logits = teacher_model(aligned.teacher_ids.to(device)).logits.float().cpu()
    spans = [(torch.from_numpy(a.student_spans), torch.from_numpy(a.teacher_spans)) for a in alignments]
    torch.save({"student_logits": student_logits, "teacher_logits": teacher_logits, "batch": aligned,
                "spans": spans, "prefix": (len(prompt_s[0]), len(prompt_t[0]))}, out)  # fmt: skip


def _trl_inputs(data: dict[str, Any]) -> dict[str, torch.Tensor]:
    batch = data["batch"]
    s_pre, t_pre = data["prefix"]

    def offsets(which: int, width: int, start: int) -> torch.Tensor:
        out = torch.zeros(len(data["spans"]), width, 2, dtype=torch.long)
        for b, pair in enumerate(data["spans"]):
            out[b, start : start + pair[which].shape[0]] = pair[which]
        return out

    return {
        "student_labels": torch.where(batch.student_groups >= 0, batch.student_ids, -100),
        "teacher_labels": torch.where(batch.teacher_groups >= 0, batch.teacher_ids, -100),
        "student_input_ids": batch.student_ids,
        "teacher_input_ids": batch.teacher_ids,
        "student_byte_offsets": offsets(0, batch.student_ids.shape[1], s_pre),
        "teacher_byte_offsets": offsets(1, batch.teacher_ids.shape[1], t_pre),
    }


def _loss_fn(impl: str, mode: str, data: dict[str, Any], device: str) -> Any:
    if impl in ("gold", "gold_global"):
        from gold.config import LossConfig
        from gold.losses import cross_tokenizer_loss
        from gold.losses.fused import warm_up

        warm_up()  # load numba's compiled kernels before timing
        shifted = impl == "gold"  # gold_global: the global vocabulary map in shifted groups too
        config = (LossConfig(hybrid_weight=1.0, shifted_matching=shifted) if mode == "hybrid"
                  else LossConfig(hybrid_weight=0.0, uld_weight=1.0))  # fmt: skip
        batch = data["batch"].to(device)
        return lambda s, t: cross_tokenizer_loss(s, t, batch, config)[0]
    from trl.experimental.gold.gold_trainer import ULDLoss

    from gold.models.zoo import load_tokenizer

    config = SimpleNamespace(
        uld_crossentropy_weight=0.0, uld_distillation_weight=1.0, uld_student_temperature=1.0,
        uld_teacher_temperature=1.0, uld_skip_student_eos=False, uld_skip_teacher_eos=False, use_extended_uld=True,
        uld_token_merge_strategy="bayesian", uld_use_hybrid_loss=mode == "hybrid", uld_hybrid_matched_weight=None,
        uld_hybrid_unmatched_weight=None, beta=0.5,
    )  # fmt: skip
    loss = ULDLoss(config, load_tokenizer("qwen2.5"), load_tokenizer("llama-3"), device=device)
    inputs = {k: v.to(device) for k, v in _trl_inputs(data).items()}
    return lambda s, t: loss(s, t, **inputs)


def worker(impl: str, mode: str, backward: bool, path: Path, device: str) -> dict[str, float]:
    """One measurement in this process: load logits, build the loss (compiled kernels loaded), time one call."""
    data = torch.load(path, weights_only=False)
    student_logits = data["student_logits"].to(device).requires_grad_(backward)
    teacher_logits = data["teacher_logits"].to(device)
    fn = _loss_fn(impl, mode, data, device)
    _reset_peak_rss()  # loading the logits may have peaked above what stays resident; start afresh
    baseline = _rss_mb()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2**20
    start = time.perf_counter()
    value = fn(student_logits, teacher_logits)
    if backward:
        value.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20 - baseline
    else:
        peak = _peak_rss_mb() - baseline
    return {"seconds": time.perf_counter() - start, "peak_mb": peak, "value": float(value)}


def _reset_peak_rss() -> None:
    """Set the process's peak resident size (VmHWM) to its current size (Linux ≥ 4.0)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _measure(impl: str, mode: str, backward: bool, path: Path, device: str) -> dict[str, float]:
    args = [sys.executable, "-m", "benchmarks.bench_loss", "--worker", impl, mode, str(int(backward)), str(path),
            "--device", device]  # fmt: skip
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _compare(mode: str, path: Path, device: str, backward: bool, impls: tuple[str, str] = ("gold", "trl")
             ) -> dict[str, float]:  # fmt: skip
    row: dict[str, float] = {}
    key = "" if backward else "forward_"
    for impl in impls:
        measured = _measure(impl, mode, backward, path, device)
        row[f"{impl}_{key}s"] = measured["seconds"]
        row[f"{impl}_{key}peak_mb"] = measured["peak_mb"]
        row[f"{impl}_{key}value"] = measured["value"]
        label = "forward+backward" if backward else "forward"
        print(f"{mode:>6} {impl:>4} {label:>16}: {measured['seconds']:8.3f}s, peak {measured['peak_mb']:6.0f} MB, "
              f"value {measured['value']:.4f}", flush=True)  # fmt: skip
    row[f"{key}speedup"] = row[f"{impls[1]}_{key}s"] / row[f"gold_{key}s"]
    return row


def shifted_cost(batch: int, tokens: int, device: str) -> dict[str, Any]:
    """The hybrid with shifted matching (gold's default) against the global map alone, on the same logits."""
    result: dict[str, Any] = {"device": device, "batch": batch, "tokens": tokens}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "full.pt"
        build_inputs(batch, tokens, device, path)
        aligned = torch.load(path, weights_only=False)["batch"]
        result["groups"], result["shifted_groups"] = aligned.num_groups, aligned.shifts.num_shifted
        result["pair_sets"] = len(aligned.shifts.student_ids)
        for backward in (False, True):
            result["backward" if backward else "forward"] = _compare("hybrid", path, device, backward,
                                                                     impls=("gold", "gold_global"))  # fmt: skip
    return result


def run(batch: int, tokens: int, device: str, backward_batch: int) -> dict[str, Any]:
    """Forward on ``batch`` examples; forward+backward on the first ``backward_batch`` (the full batch by
    default; TRL's backward through its per-group Python merge takes ~10 minutes of it on 2 CPU cores)."""
    result: dict[str, Any] = {"device": device, "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                              "batch": batch, "backward_batch": backward_batch, "tokens": tokens}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        full, small = Path(tmp) / "full.pt", Path(tmp) / "small.pt"
        build_inputs(batch, tokens, device, full)
        if backward_batch == batch:
            small = full
        else:
            build_inputs(backward_batch, tokens, device, small)
        for name, path in (("groups", full), ("backward_groups", small)):
            result[name] = torch.load(path, weights_only=False)["batch"].num_groups
        for mode in ("uld", "hybrid"):
            result[mode] = {**_compare(mode, full, device, False), **_compare(mode, small, device, True)}
    return result


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256, help="approximate completion tokens per example")
    parser.add_argument("--backward-batch", type=int, default=8, help="examples for the forward+backward timing")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--shifted-cost", action="store_true", help="only time the hybrid with and without shifted matching (no TRL)"
    )
    parser.add_argument("--worker", nargs=4, metavar=("IMPL", "MODE", "BACKWARD", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        impl, mode, backward, path = args.worker
        print(json.dumps(worker(impl, mode, backward == "1", Path(path), args.device)))
        return None
    if args.shifted_cost:
        result = shifted_cost(args.batch, args.tokens, args.device)
    else:
        result = run(args.batch, args.tokens, args.device, args.backward_batch)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
