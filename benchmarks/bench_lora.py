"""python -m benchmarks.bench_lora [--seeds 0 1] [--steps 16] [--json OUT]  (about 15 minutes on 2 CPU cores; offline)

LoRA against full fine-tuning on the real pair (Gemma-3-270M teaches SmolLM2-135M-Instruct,
``examples/gemma3-270m_to_smollm2-135m.yaml``): the same start, data, batches, loss and steps per seed; only what
trains differs (every weight at the recipe's lr 2e-5, or rank-16 adapters on every linear layer of the decoder at
lr 2e-4; SmolLM2 ties its output layer to its embedding, so the head stays frozen).

Memory of the student's training state, counted exactly: parameter bytes (shared storages once), gradient bytes (the
trainable parameters'), optimizer-state bytes (AdamW's tensors after the run), and activations: the bytes autograd
saves for backward in the first step's forward and loss (``torch.autograd.graph.saved_tensors_hooks``, one count per
storage, storages of parameters excluded). Quality: the merged student scored by ``gold eval``'s code on the held-out
topics, KL(teacher‖student) per byte on the 32 held-out teacher samples and KL(student‖teacher) per byte on
``--student-samples`` of the student's own samples per held-out prompt.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gold.cli.recipe import load_recipe
from gold.cli.run import build_trainer
from gold.data.files import read_rows
from gold.evaluation.run import AgreementCache, eval_set, load_scored_model, score_model
from gold.models.lora import save_student
from gold.training.trainer import GoldTrainer

RECIPE = "examples/gemma3-270m_to_smollm2-135m.yaml"
HELD_OUT = "examples/data/real_pair_heldout.jsonl"
LORA = "student.peft={r: 16, alpha: 32, dropout: 0.0, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}"  # noqa: E501
ARMS = {"full fine-tuning": ["training.learning_rate=2.0e-5"], "LoRA r16": [LORA, "training.learning_rate=2.0e-4"]}


class Measured(GoldTrainer):
    """Counts the bytes autograd saves for backward during the first step's forward and loss."""

    activation_bytes: int | None = None

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if self.activation_bytes is not None:
            return super().compute_loss(model, inputs, *args, **kwargs)
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                seen[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = super().compute_loss(model, inputs, *args, **kwargs)
        self.activation_bytes = sum(seen.values())
        return loss


def state_bytes(trainer: GoldTrainer) -> dict[str, int]:
    """Parameter, gradient and optimizer-state bytes of the student, exactly (shared storages counted once)."""
    params = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in trainer.model.parameters()}
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    optimizer = sum(t.numel() * t.element_size() for state in trainer.optimizer.state.values()
                    for t in state.values() if torch.is_tensor(t) and t.dim() > 0)  # fmt: skip
    return {"parameter_bytes": sum(params.values()), "trainable_parameters": sum(p.numel() for p in trainable),
            "gradient_bytes": sum(p.numel() * p.element_size() for p in trainable), "optimizer_bytes": optimizer,
            "activation_bytes": int(trainer.activation_bytes or 0)}  # fmt: skip


def train_arm(name: str, overrides: list[str], out: Path, seed: int, steps: int) -> tuple[Path, dict[str, Any]]:
    folder = out / name.replace(" ", "_")
    config = load_recipe(RECIPE, [*overrides, f"training.output_dir={folder}", f"training.seed={seed}",
                                  f"training.max_steps={steps}", "training.save_strategy='no'",
                                  "training.report_to=[]"])  # fmt: skip
    trainer = build_trainer(config, trainer_cls=Measured)
    started = time.perf_counter()
    trainer.train()
    figures: dict[str, Any] = {**state_bytes(trainer), "train_seconds": time.perf_counter() - started}
    save_student(trainer.accelerator.unwrap_model(trainer.model), folder / "merged")
    trainer.student_tokenizer.save_pretrained(str(folder / "merged"))
    return folder / "merged", figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--student-samples", type=int, default=2, help="student samples per held-out prompt")
    parser.add_argument("--out", type=Path, default=Path("out/bench_lora"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        for name, overrides in ARMS.items():
            folder, figures = train_arm(name, overrides, args.out / f"seed{seed}", seed, args.steps)
            runs.append({"arm": name, "seed": seed, "folder": str(folder), **figures})
            print(json.dumps(runs[-1]), flush=True)
    teacher = load_scored_model("gemma-3-270m")
    data, cache = eval_set(read_rows(HELD_OUT)), AgreementCache()
    for run in runs:
        score = score_model(run["arm"], load_scored_model(run["folder"]), data, role="student", teacher=teacher,
                            cache=cache, max_new_tokens=48, seed=run["seed"],
                            student_samples=args.student_samples)  # fmt: skip
        run["scores"] = asdict(score)
        print(run["arm"], run["seed"], f"KL(T‖S) {score.kl_bits_per_byte:.4f}",
              f"KL(S‖T) {score.reverse_kl_bits_per_byte:.4f}", flush=True)  # fmt: skip
    if args.json:
        payload = {"steps": args.steps, "student_samples": args.student_samples, "runs": runs}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
