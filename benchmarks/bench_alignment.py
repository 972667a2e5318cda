"""Alignment speed: gold vs TRL 1.16's GOLD path, on the same batch, in the same run.

    python benchmarks/bench_alignment.py [--batch 64] [--tokens 1000] [--repeats 5] [--json OUT]

Times (median of ``--repeats``), llama-3 (teacher) and qwen2.5 (student) zoo tokenizers:

* ``tokenize_s``: both tokenizers encode the batch (fast, batched Rust calls).
* ``gold_align_s``: gold byte spans from ids + groups, batched (``alignment.align_batch``).
* ``trl_align_s``: TRL's path from the same encodings: char offsets → byte offsets
  (``trl.experimental.utils._normalize_byte_offsets``) + ``ULDLoss._align_by_byte_offsets`` per example.
* ``one_vocab_fast_s`` / ``one_vocab_general_s``: one vocabulary on both sides (the student's ids on both):
  ``alignment.align_identical`` (1:1 groups) vs the general ``align_text_batch`` on the same ids; and
  ``one_vocab_collate_*_s``: a whole batch of 64 sampled completions through the collator, on its one-vocabulary
  path vs the general one (teacher re-encoding, byte check, aligner).
* ``gold_ids_to_spans_s`` / ``trl_ids_to_spans_s``: spans of *generated* ids (no text, no offsets):
  gold's table lookup vs TRL's per-token ``convert_ids_to_tokens`` + ``piece_byte_len`` rebuild
  (``GOLDTrainer._maybe_add_completion_byte_offsets``).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from alignment import align_batch, align_identical, align_text_batch, token_byte_spans, token_bytes_table
from gold.models.zoo import load_tokenizer

PIECES = [
    "The committee reviewed the proposal and asked for a revised budget by Friday. ",
    "In 2024, revenue grew 17.5% to $3,482,901 while costs fell by 2.3 points. ",
    "東京都は日本の首都であり、人口は約1400万人です。 ",
    "Les étudiants ont présenté leurs résultats à la conférence de Lyon. ",
    "def merge(a, b):\n    out = []\n    while a and b:\n        out.append(a.pop(0) if a[0] < b[0] else b.pop(0))\n",
    "    return out + a + b\n\n",
    "Great job 👍🏽 — see you at 9:30! 🎉👩‍💻 ",
    "Σύμφωνα με την έκθεση, η ανάπτυξη συνεχίστηκε. ",
    "SELECT id, name FROM users WHERE created_at > '2024-01-01';\n",
]


def make_texts(batch: int, tokens: int, seed: int = 0) -> list[str]:
    """``batch`` mixed texts of roughly ``tokens`` Llama-3 tokens each (≈ 3.3 bytes per token)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(batch):
        parts: list[str] = []
        while sum(len(p.encode()) for p in parts) < tokens * 3.3:
            parts.append(rng.choice(PIECES))
        texts.append("".join(parts))
    return texts


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up (builds caches, e.g. gold's id→bytes tables)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def trl_align(student_backend: Any, teacher_backend: Any, texts: list[str], encodings: tuple) -> list:
    """TRL 1.16's alignment from encodings: byte offsets per side, then the two-pointer walk."""
    from trl.experimental.gold.gold_trainer import ULDLoss
    from trl.experimental.utils import _normalize_byte_offsets

    def byte_offsets(text: str, encoding: Any) -> list[tuple[int, int]]:
        char_to_byte = [0]  # the cumulative table encode_with_byte_offsets builds
        for ch in text:
            char_to_byte.append(char_to_byte[-1] + len(ch.encode("utf-8")))
        offsets = [(char_to_byte[s], char_to_byte[e]) for s, e in encoding.offsets]
        return _normalize_byte_offsets(offsets, encoding.tokens, text.encode("utf-8"))

    student_encodings, teacher_encodings = encodings
    out = []
    for text, s_enc, t_enc in zip(texts, student_encodings, teacher_encodings, strict=True):
        out.append(ULDLoss._align_by_byte_offsets(byte_offsets(text, s_enc), byte_offsets(text, t_enc)))
    return out


def trl_ids_to_spans(tokenizer: Any, batch_ids: list[list[int]]) -> list[list[tuple[int, int]]]:
    """TRL 1.16's rebuild of completion byte offsets from sampled ids, one token at a time."""
    from trl.experimental.utils import piece_byte_len

    rows = []
    for ids in batch_ids:
        offsets, cursor = [], 0
        for token_id in ids:
            width = piece_byte_len(tokenizer.convert_ids_to_tokens([token_id])[0])
            offsets.append((cursor, cursor + width))
            cursor += width
        rows.append(offsets)
    return rows


def one_vocabulary_batches(tokenizer: Any, texts: list[str], repeats: int) -> dict[str, float]:
    """A self teacher's training batch of sampled completions (64 rollouts): the collator on its one-vocabulary path
    (the teacher reads the student's ids, 1:1 groups) vs the general path it took before (the teacher re-encodes
    the decoded text, checks its bytes, and the aligner runs)."""
    from gold.data.collate import Collator
    from gold.data.examples import prompt_ids
    from gold.losses import PairTables

    tables = PairTables.build(tokenizer, tokenizer, student_rows=len(tokenizer), teacher_rows=len(tokenizer))
    fast = Collator(tokenizer, tokenizer, tables, max_completion_length=4096)
    general = Collator(tokenizer, tokenizer, tables, max_completion_length=4096)
    object.__setattr__(general, "one_vocabulary", False)
    eos = tokenizer.eos_token_id
    samples = [[*tokenizer.encode(text, add_special_tokens=False), eos] for text in texts]
    prompts = [prompt_ids(tokenizer, "Write something.\n")] * len(texts)

    def collate(collator: Any) -> Any:
        return collator(prompts, prompts, [collator.from_rollout(ids) for ids in samples], source="student")

    return {"one_vocab_collate_fast_s": median_time(lambda: collate(fast), repeats),
            "one_vocab_collate_general_s": median_time(lambda: collate(general), repeats)}  # fmt: skip


def run(batch: int, tokens: int, repeats: int) -> dict[str, Any]:
    student, teacher = load_tokenizer("qwen2.5"), load_tokenizer("llama-3")
    texts = make_texts(batch, tokens)
    s_backend, t_backend = student.backend_tokenizer, teacher.backend_tokenizer
    token_bytes_table(student), token_bytes_table(teacher)  # built once per tokenizer, cached

    def tokenize() -> tuple:
        return (
            s_backend.encode_batch(texts, add_special_tokens=False),
            t_backend.encode_batch(texts, add_special_tokens=False),
        )

    encodings = tokenize()
    student_ids = [np.asarray(e.ids) for e in encodings[0]]
    teacher_ids = [np.asarray(e.ids) for e in encodings[1]]
    gold_groups = align_batch(student, student_ids, teacher, teacher_ids)
    trl_groups = trl_align(s_backend, t_backend, texts, encodings)
    assert sum(a.num_groups for a in gold_groups) == sum(len(s) for s, _ in trl_groups), "same groups expected"

    result = {
        "tokenize_s": median_time(tokenize, repeats),
        "gold_align_s": median_time(lambda: align_batch(student, student_ids, teacher, teacher_ids), repeats),
        "trl_align_s": median_time(lambda: trl_align(s_backend, t_backend, texts, encodings), repeats),
        "gold_ids_to_spans_s": median_time(lambda: [token_byte_spans(student, ids) for ids in student_ids], repeats),
        "trl_ids_to_spans_s": median_time(lambda: trl_ids_to_spans(student, [i.tolist() for i in student_ids]), 1),
        # one vocabulary on both sides (a self teacher): the 1:1 fast path vs the general aligner on the same ids
        "one_vocab_fast_s": median_time(lambda: align_identical(student, student_ids, texts), repeats),
        "one_vocab_general_s": median_time(
            lambda: align_text_batch(student, student, texts, student_ids=student_ids, teacher_ids=student_ids), repeats
        ),
    }
    result.update(one_vocabulary_batches(student, texts, repeats))
    result.update(
        batch=batch,
        student_tokens=int(sum(len(i) for i in student_ids)),
        teacher_tokens=int(sum(len(i) for i in teacher_ids)),
        groups=int(sum(a.num_groups for a in gold_groups)),
        align_speedup_vs_trl=result["trl_align_s"] / result["gold_align_s"],
        ids_to_spans_speedup_vs_trl=result["trl_ids_to_spans_s"] / result["gold_ids_to_spans_s"],
        one_vocab_fast_path_speedup=result["one_vocab_general_s"] / result["one_vocab_fast_s"],
        one_vocab_collate_speedup=result["one_vocab_collate_general_s"] / result["one_vocab_collate_fast_s"],
        gold_align_over_tokenize=result["gold_align_s"] / result["tokenize_s"],
        machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
    )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=1000, help="approximate Llama-3 tokens per text")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    result = run(args.batch, args.tokens, args.repeats)
    for key, value in result.items():
        print(f"{key:>28}: {value:.6g}" if isinstance(value, float) else f"{key:>28}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
