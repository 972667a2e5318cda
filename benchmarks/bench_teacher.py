"""Three teacher sources on the same batches, in the same run: a local teacher, a served one (vLLM on 127.0.0.1), and
a teacher cache built from the server. Runs in ``.venv-vllm`` (it starts ``gold vllm-serve``).

    .venv-vllm/bin/python benchmarks/bench_teacher.py [--rows 8] [--steps 6] [--top-k 20] [--json OUT]

Teacher: a random Llama (hidden 256, 4 layers, 8 heads) on the Mistral-v1 tokenizer (32,000 ids), its final norm
scaled by ``--sharpen`` so that its rows are peaked like a trained model's (a random one is near-uniform, where top-K
holds little mass); student: a tiny Llama on SmolLM2's; data: ``examples/data/real_pair_train.jsonl``. Per source:

* ``teacher_s``: the teacher's rows for one batch of ``--rows`` sequences (median over the batches);
* ``step_s``: one optimizer step of ``gold``'s trainer with that teacher (``train_runtime / steps``), on the
  dataset's completions (``lmbda`` 0), with ``train_loss`` and the last logged ``teacher_matched_mass`` (top-K vs the
  dense teacher);
* for the cache: ``bytes_per_token`` (its Arrow files over the completion tokens stored);
* for the server: ``requests_per_s`` of the client (one request per sequence, ``max_concurrency`` 8), and one batch
  asked by one caller vs two callers asking half each at once (``accelerate launch`` with two processes, each asking
  for its own share, simulated with two threads on this machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gold.cli.recipe import config_from_dict  # noqa: E402
from gold.cli.teacher_cache import build_cache  # noqa: E402
from gold.config import RolloutConfig  # noqa: E402
from gold.data.examples import Example  # noqa: E402
from gold.data.files import examples_from_rows, read_rows  # noqa: E402
from gold.models.build import tiny_model  # noqa: E402
from gold.models.zoo import load_tokenizer  # noqa: E402
from gold.rollout.vllm_server import wait_for_server  # noqa: E402
from gold.teacher import LocalTeacher  # noqa: E402
from gold.teacher.cache import CachedTeacher, TeacherCache  # noqa: E402
from gold.teacher.served import ServedTeacher, real_sequences  # noqa: E402
from gold.training.trainer import GoldTrainer  # noqa: E402

DATA = ROOT / "examples" / "data" / "real_pair_train.jsonl"


def start_server(folder: Path) -> tuple[str, subprocess.Popen]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(folder / "server.log", "w")  # noqa: SIM115 - the process holds it
    command = [sys.executable, "-m", "gold.cli", "vllm-serve", str(folder), "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "float32"]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for_server(url, 600)
    return url, process


def trainer_for(teacher, student_tokenizer, examples: list[Example], steps: int, rows: int, out: Path) -> GoldTrainer:
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=rows, use_cpu=True,
                             report_to=[], save_strategy="no", disable_tqdm=True, logging_steps=steps,
                             seed=0)  # fmt: skip
    student = tiny_model(student_tokenizer, seed=0, hidden_size=64, layers=1, heads=2)
    # dataset completions only (lmbda 0): every source scores the same sequences, and the cache holds them all
    return GoldTrainer(
        student,
        teacher,
        args=args,
        train_dataset=examples,
        student_tokenizer=student_tokenizer,
        rollout=RolloutConfig(lmbda=0.0),
    )


def time_source(name: str, teacher, student_tokenizer, examples, args, out: Path) -> dict:
    trainer = trainer_for(teacher, student_tokenizer, examples, args.steps, args.rows, out / name)
    batches = [trainer.build_batch(examples[i : i + args.rows], "dataset") for i in range(0, args.rows * args.steps,
                                                                                        args.rows)]  # fmt: skip
    teacher.logits(batches[0].teacher)  # warm-up (the server's first prompt_logprobs call compiles)
    times = []
    for batch in batches:
        began = time.perf_counter()
        teacher.logits(batch.teacher)
        times.append(time.perf_counter() - began)
    result = trainer.train()
    mass = [e["hybrid/teacher_matched_mass"] for e in trainer.state.log_history if "hybrid/teacher_matched_mass" in e]
    return {"teacher_s": statistics.median(times), "step_s": result.metrics["train_runtime"] / args.steps,
            "train_loss": result.metrics["train_loss"], "teacher_matched_mass": mass[-1]}  # fmt: skip


def split_callers(served: ServedTeacher, batch) -> dict:
    sequences, starts = real_sequences(batch.teacher)
    width = batch.teacher.logits_to_keep
    half = len(sequences) // 2
    one, two = [], []
    for _ in range(3):
        began = time.perf_counter()
        served.sequence_rows(sequences, starts, width)
        one.append(time.perf_counter() - began)
        began = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda part: served.sequence_rows(sequences[part], starts[part], width),
                          [slice(0, half), slice(half, None)]))  # fmt: skip
        two.append(time.perf_counter() - began)
    return {"one_caller_s": statistics.median(one), "two_callers_s": statistics.median(two)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--sharpen", type=float, default=40.0, help="scale of the teacher's final norm (peaked rows)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    student_tokenizer, teacher_tokenizer = load_tokenizer("smollm2"), load_tokenizer("mistral-v1")
    data = config_from_dict({"student": {"model": "x"}, "teacher": {"model": "x"}, "data": {"path": str(DATA)}}).data
    examples = examples_from_rows(read_rows(DATA), data)
    examples = examples[: args.rows * args.steps]
    work = Path(tempfile.mkdtemp(prefix="gold-bench-teacher-"))
    folder = work / "teacher"
    teacher_model = tiny_model(teacher_tokenizer, seed=1, hidden_size=256, layers=4, heads=8)
    teacher_model.config.max_position_embeddings = 1024  # the server's context (rotary positions need no table)
    with torch.no_grad():  # a random model is near-uniform over 32k ids; a trained one is peaked: sharpen its logits
        teacher_model.model.norm.weight.mul_(args.sharpen)
    teacher_model.save_pretrained(folder)
    teacher_tokenizer.save_pretrained(folder)
    teacher_tokenizer = load_tokenizer(str(folder))  # the folder's, as the cache build reads it
    url, process = start_server(folder)
    try:
        results = {"local": time_source("local", LocalTeacher(teacher_model, teacher_tokenizer), student_tokenizer,
                                        examples, args, work)}  # fmt: skip
        served = ServedTeacher(url, teacher_tokenizer, top_k=args.top_k)
        results["served"] = time_source("served", served, student_tokenizer, examples, args, work)
        results["served"]["requests_per_s"] = served.requests / served.request_seconds
        splitter = trainer_for(served, student_tokenizer, examples, 1, args.rows, work / "split")
        results["served"].update(split_callers(served, splitter.build_batch(examples[: args.rows], "dataset")))
        recipe = {"student": {"model": "tiny", "tokenizer": "smollm2"},
                  "teacher": {"tokenizer": str(folder), "server_url": url, "top_k": args.top_k},
                  "data": {"path": str(DATA)}}  # fmt: skip
        began = time.perf_counter()
        cache = build_cache(config_from_dict(recipe), work / "cache", progress=False)
        build_s = time.perf_counter() - began  # the whole data file, not only the benchmark's rows
        cached = CachedTeacher(cache, teacher_tokenizer, fallback=None, on_miss="error")
        results["cache"] = time_source("cache", cached, student_tokenizer, examples, args, work)
        results["cache"].update({"bytes_per_token": cache.size_bytes() / cache.tokens(), "build_s": build_s,
                                 "sequences": len(cache), "tokens": cache.tokens()})  # fmt: skip
        assert TeacherCache(work / "cache").info.top_k == args.top_k
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
              "command": " ".join(sys.argv), "rows": args.rows, "steps": args.steps, "top_k": args.top_k,
              "sharpen": args.sharpen, "results": results}  # fmt: skip
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
