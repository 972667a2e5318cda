"""Slow, obviously-right references for the fast paths. Plain Python loops, no vectorization.

Each function states the definition it implements; tests compare the fast code against it on random
and awkward inputs.
"""

from __future__ import annotations

from transformers.convert_slow_tokenizer import bytes_to_unicode

_BYTE_DECODER = {char: byte for byte, char in bytes_to_unicode().items()}


def reference_piece_bytes(piece: str, kind: str) -> bytes:
    """The bytes one vocabulary piece spells, by the published definition of its family."""
    if kind == "byte_level":
        return bytes(_BYTE_DECODER[char] for char in piece)
    if kind == "sentencepiece":
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            return bytes([int(piece[3:5], 16)])
        return piece.replace("▁", " ").encode("utf-8")
    if piece.startswith("##"):
        return piece[2:].encode("utf-8")
    return (" " + piece).encode("utf-8")


def reference_spans(token_bytes: list[bytes]) -> list[tuple[int, int]]:
    """Token spans by walking the tokens and adding up their lengths."""
    spans, cursor = [], 0
    for piece in token_bytes:
        spans.append((cursor, cursor + len(piece)))
        cursor += len(piece)
    return spans


def reference_groups(
    student_spans: list[tuple[int, int]],
    student_special: list[bool],
    teacher_spans: list[tuple[int, int]],
    teacher_special: list[bool],
) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Groups by the byte-level definition.

    A byte position p > 0 is a boundary when some text token of each side ends exactly at p. Groups
    are the intervals between consecutive boundaries, starting at 0. A text token with bytes belongs
    to the group holding its first byte; a zero-width text token at position p to the group holding
    byte p - 1 (the first group when p is 0). Tokens not inside a group, and special tokens, get -1.
    """

    def ends(spans: list[tuple[int, int]], special: list[bool]) -> set[int]:
        return {end for (start, end), is_special in zip(spans, special, strict=True) if not is_special and end > 0}

    boundaries = sorted(ends(student_spans, student_special) & ends(teacher_spans, teacher_special))
    intervals, start = [], 0
    for boundary in boundaries:
        intervals.append((start, boundary))
        start = boundary

    def group_of(span: tuple[int, int], is_special: bool) -> int:
        if is_special:
            return -1
        byte = span[0] if span[1] > span[0] else max(span[0] - 1, 0)
        for index, (lo, hi) in enumerate(intervals):
            if lo <= byte < hi and span[1] <= hi:
                return index
        return -1

    student = [group_of(s, sp) for s, sp in zip(student_spans, student_special, strict=True)]
    teacher = [group_of(t, tp) for t, tp in zip(teacher_spans, teacher_special, strict=True)]
    return student, teacher, intervals


# ---------------------------------------------------------------- losses (float64, explicit loops)
import torch  # noqa: E402


def reference_group_rows(logits: torch.Tensor, ids: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Chain-rule rows by looping over examples, groups and tokens (DESIGN §4)."""
    rows = []
    for b in range(ids.shape[0]):
        count = int(groups[b].max().item()) + 1 if (groups[b] >= 0).any() else 0
        for g in range(count):
            positions = [t for t in range(ids.shape[1]) if int(groups[b, t]) == g]
            prefix = logits.new_zeros(())
            for t in positions[:-1]:
                prefix = prefix + torch.log_softmax(logits[b, t - 1], dim=-1)[ids[b, t]]
            rows.append(torch.log_softmax(logits[b, positions[-1] - 1], dim=-1) + prefix)
    return torch.stack(rows) if rows else logits.new_zeros((0, logits.shape[-1]))


def reference_kl(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(P ‖ Q) per row by an explicit sum that skips zero-probability terms of P."""
    out = []
    for p_row, q_row in zip(p_logprobs, q_logprobs, strict=True):
        total = p_row.new_zeros(())
        for lp, lq in zip(p_row, q_row, strict=True):
            if lp > float("-inf"):
                total = total + lp.exp() * (lp - lq)
        out.append(total)
    return torch.stack(out)


def reference_jsd(student: torch.Tensor, teacher: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalized JSD from its definition (β = 0: KL(T‖S), β = 1: KL(S‖T))."""
    if beta == 0:
        return reference_kl(teacher, student)
    if beta == 1:
        return reference_kl(student, teacher)
    mixture = torch.log(beta * teacher.exp() + (1 - beta) * student.exp())
    return beta * reference_kl(teacher, mixture) + (1 - beta) * reference_kl(student, mixture)


def reference_uld(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Sorted-probability L1, one row at a time with Python's sort order (stable descending)."""
    out = []
    for s_row, t_row in zip(student.exp(), teacher.exp(), strict=True):
        s_order = sorted(range(len(s_row)), key=lambda i: -float(s_row[i].detach()))
        t_order = sorted(range(len(t_row)), key=lambda i: -float(t_row[i].detach()))
        total = s_row.new_zeros(())
        for k in range(max(len(s_order), len(t_order))):
            a = s_row[s_order[k]] if k < len(s_order) else s_row.new_zeros(())
            b = t_row[t_order[k]] if k < len(t_order) else t_row.new_zeros(())
            total = total + (a - b).abs()
        out.append(total)
    return torch.stack(out)


def reference_hybrid(
    student: torch.Tensor, teacher: torch.Tensor, s_matched: list[int], t_matched: list[int], beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(matched JSD with an "other" bucket, unmatched ULD, teacher matched mass), row by row."""
    matched, unmatched, masses = [], [], []
    for s_row, t_row in zip(student, teacher, strict=True):
        s_part = s_row[torch.tensor(s_matched, dtype=torch.long)]  # explicit ids, possibly none
        t_part = t_row[torch.tensor(t_matched, dtype=torch.long)]
        s_other = torch.log(1 - s_part.exp().sum()).reshape(1)
        t_other = torch.log(1 - t_part.exp().sum()).reshape(1)
        matched.append(reference_jsd(torch.cat([s_part, s_other])[None], torch.cat([t_part, t_other])[None], beta)[0])
        s_rest = torch.stack([s_row[i] for i in range(len(s_row)) if i not in s_matched])
        t_rest = torch.stack([t_row[i] for i in range(len(t_row)) if i not in t_matched])
        unmatched.append(reference_uld(s_rest[None], t_rest[None])[0])
        masses.append(t_part.exp().sum())
    return torch.stack(matched), torch.stack(unmatched), torch.stack(masses)


def reference_sparse_hybrid(
    student: torch.Tensor, teacher: torch.Tensor, s_matched: list[int], t_matched: list[int], tail: int, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`reference_hybrid` for sparse teacher rows (``teacher[:, tail]`` the tail bucket, unknown entries
    ``-inf``), one row at a time with explicit buckets. The JSD's outcomes: the pairs whose teacher entry is known;
    for β in (0, 1) a tail outcome (teacher: its tail; student: its matched columns whose partner is unknown); and
    "other" (everything else on each side; at β = 0 or 1 the tail outcome's masses too). The ULD compares the
    student's unmatched columns with the teacher's known unmatched ones."""
    matched, unmatched, masses = [], [], []
    own_tail = 0.0 < beta < 1.0
    for s_row, t_row in zip(student, teacher, strict=True):
        s_known, t_known, s_moved = [], [], []
        for s_id, t_id in zip(s_matched, t_matched, strict=True):
            if torch.isinf(t_row[t_id]):
                s_moved.append(s_row[s_id])
            else:
                s_known.append(s_row[s_id])
                t_known.append(t_row[t_id])
        if own_tail:
            s_known.append(torch.logsumexp(torch.stack(s_moved), 0) if s_moved else s_row.new_tensor(float("-inf")))
            t_known.append(t_row[tail])
        s_dist = torch.stack(s_known) if s_known else s_row.new_zeros(0)
        t_dist = torch.stack(t_known) if t_known else t_row.new_zeros(0)
        s_other = torch.log((1 - s_dist.exp().sum()).clamp(min=0)).reshape(1)
        t_other = torch.log((1 - t_dist.exp().sum()).clamp(min=0)).reshape(1)
        pair = torch.cat([s_dist, s_other])[None].clamp(min=-1e30), torch.cat([t_dist, t_other])[None].clamp(min=-1e30)
        matched.append(reference_jsd(*pair, beta)[0])
        s_rest = torch.stack([s_row[i] for i in range(len(s_row)) if i not in s_matched])
        t_rest = torch.stack([t_row[i] for i in range(len(t_row)) if i not in t_matched and i != tail])
        unmatched.append(reference_uld(s_rest[None], t_rest[None])[0])
        masses.append(t_dist.exp().sum())
    return torch.stack(matched), torch.stack(unmatched), torch.stack(masses)
