"""What :class:`gold.training.trainer.GoldTrainer` logs each logging step: loss terms as the mean that was optimised,
alignment counts, stop rates per source, the rollout engine's health (``rollout/engine_logprob_gap``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from gold.data.examples import TrainBatch


class StepMetrics:
    """A mixin for ``transformers.Trainer``: collects per-slice metrics and adds them to the training log."""

    _metrics: defaultdict[str, list[float]]
    _sums: defaultdict[str, float]

    def _init_metrics(self) -> None:
        self._metrics = defaultdict(list)
        self._sums = defaultdict(float)

    def count_items(self, batch: TrainBatch) -> int:
        raise NotImplementedError

    def _record(self, metrics: dict[str, float], batch: TrainBatch, num_items: Any, weight: float = 1.0) -> None:
        """Keeps one slice's loss terms, alignment counts and sources for the next log line (``weight``: the
        teacher's mixing weight, :mod:`gold.training.teachers`, on its terms and items)."""
        items = self.count_items(batch)
        for key, value in metrics.items():
            if key.startswith("loss/"):
                # a term arrives as this slice's sum over the step's items: keep the sum and the slice's item
                # count, and divide once per logging step, so the log shows the mean that was optimised
                self._sums[key] += weight * value * (float(num_items) if num_items is not None else items)
            else:
                self._metrics[key].append(value)
        self._sums["items"] += weight * items
        rows = float(len(batch.completions))
        on_policy = batch.source == "student"
        self._metrics["rollout/on_policy_fraction"].append(float(on_policy))  # of slices (what lmbda draws)
        self._sums["rows"] += rows
        self._sums["rows_on_policy"] += rows if on_policy else 0.0
        for key, value in batch.counts.items():
            self._sums[f"count/{key}"] += value
        # stop rate per source: dataset rows nearly always ended, rollouts and teacher samples tell
        self._sums[f"count/{batch.source}/completions"] += batch.counts["completions"]
        self._sums[f"count/{batch.source}/ended"] += batch.counts["completions/ended"]
        self._metrics["rollout/completion_tokens"].append(float((batch.aligned.student_groups >= 0).sum()))

    def _logged_sums(self) -> dict[str, float]:
        sums, out = self._sums, {}
        for key, value in sums.items():
            if key.startswith("loss/"):
                out[key] = value / max(sums["items"], 1.0)
        if sums.get("sft_tokens"):
            out["loss/sft"] = sums["sft_ce"] / sums["sft_tokens"]  # mean cross-entropy per token (SFT mixing)
        if sums.get("engine_gap_tokens"):
            out["rollout/engine_logprob_gap"] = sums["engine_gap"] / sums["engine_gap_tokens"]
        if "teacher_s" in sums:
            out["time/teacher_s"] = sums["teacher_s"]  # the teacher's rows (a forward, a server, a cache)
        if sums.get("teacher_cache_rows"):
            out["teacher/cache_hit_fraction"] = sums["teacher_cache_hits"] / sums["teacher_cache_rows"]
        if sums["rows"]:
            out["rollout/on_policy_row_fraction"] = sums["rows_on_policy"] / sums["rows"]
        for source in ("dataset", "student", "teacher"):
            if sums.get(f"count/{source}/completions"):
                out[f"stop_rate/{source}"] = sums[f"count/{source}/ended"] / sums[f"count/{source}/completions"]
        for key in ("align/end_groups", "align/dropped_tail_groups", "align/invalid_bytes",
                    "completions/cut_partial_tokens"):  # fmt: skip
            if f"count/{key}" in sums:
                out[key] = sums[f"count/{key}"]
        return out

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and (self._metrics or self._sums):  # a training log (not eval/*, not the run summary)
            averaged = {key: sum(values) / len(values) for key, values in self._metrics.items() if values}
            seconds = sum(self._metrics["time/rollout_and_alignment_s"]) + sum(self._metrics["time/train_s"])
            if seconds > 0:
                averaged["throughput/completion_tokens_per_s"] = (
                    sum(self._metrics["rollout/completion_tokens"]) / seconds
                )
            logs = {**logs, **averaged, **self._logged_sums()}
            self._metrics.clear()
            self._sums.clear()
        super().log(logs, start_time)  # type: ignore[misc]
