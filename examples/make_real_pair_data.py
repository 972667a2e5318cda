"""python -m examples.make_real_pair_data  (about 6 minutes on 2 CPU cores; offline)

Writes the data of the real-pair recipes: plain-text prompts on general topics and completions
*sampled from the teacher* (Gemma-3-270M, temperature 1), split by topic so that the held-out
prompts are about topics the student never trains on.

* ``examples/data/real_pair_train.jsonl``: training rows (``prompt``, ``completion``, ``ended``: false where the
  48-token limit cut the sample rather than the teacher stopping).
* ``examples/data/real_pair_heldout.jsonl``: held-out rows; their completions are teacher samples,
  so ``gold eval`` on them estimates the teacher→student KL per byte.

The files are committed; rerun this script only to change the data (it is seeded and reproduces them
on the same torch build).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from gold.config import RolloutConfig
from gold.models.zoo import load_model, load_tokenizer
from gold.rollout import SampledText, sample_completions

TOPICS = [
    "the ocean",
    "volcanoes",
    "the history of bicycles",
    "honey bees",
    "the moon",
    "bread baking",
    "chess",
    "rainforests",
    "the piano",
    "electric cars",
    "ancient Rome",
    "coffee",
    "glaciers",
    "the human heart",
    "solar panels",
    "owls",
    "the printing press",
    "deserts",
    "football",
    "tea",
    "earthquakes",
    "the internet",
    "whales",
    "mountains",
    "photography",
    "trains",
    "rice farming",
    "the violin",
    "lighthouses",
    "penguins",
    "bridges",
    "clouds",
    "libraries",
    "tomatoes",
    "dinosaurs",
    "the Olympic Games",
    "windmills",
    "sharks",
    "paper",
    "comets",
]
OPENERS = [
    "Here are three facts about {topic}:\n1.",
    "A short paragraph about {topic}.\n\n",
    "Question: What is the most interesting thing about {topic}?\nAnswer:",
    "My teacher explained {topic} to us like this:",
]
HELD_OUT_TOPICS = 8  # the last topics are held out


def prompts_for(topics: list[str]) -> list[str]:
    return [opener.format(topic=topic) for topic in topics for opener in OPENERS]


def write_rows(path: Path, prompts: list[str], samples: list[SampledText]) -> int:
    # "ended": false marks a sample the length limit cut; it gets no end group (the student must not learn to
    # stop where the teacher was only interrupted)
    rows = [{"prompt": p, "completion": s.text, "ended": s.ended}
            for p, s in zip(prompts, samples, strict=True) if s.text.strip()]  # fmt: skip
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples/data"))
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    teacher, tokenizer = load_model("gemma-3-270m"), load_tokenizer("gemma-3")
    config = RolloutConfig(temperature=1.0, top_p=1.0, top_k=0, max_completion_length=args.max_new_tokens)
    args.out.mkdir(parents=True, exist_ok=True)
    splits = {"train": TOPICS[:-HELD_OUT_TOPICS], "heldout": TOPICS[-HELD_OUT_TOPICS:]}
    for split, topics in splits.items():
        prompts = prompts_for(topics)
        samples = sample_completions(teacher, tokenizer, prompts, config, batch_size=16, progress=True)
        count = write_rows(args.out / f"real_pair_{split}.jsonl", prompts, samples)
        print(f"{split}: {count} rows written to {args.out / f'real_pair_{split}.jsonl'}")


if __name__ == "__main__":
    main()
