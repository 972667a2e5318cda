"""Scores of a student against its teacher, tokenizer-independent.

Bits per byte and KL per byte in both directions, on the teacher's samples and on the student's own
(:mod:`gold.evaluation.bits_per_byte`, :mod:`gold.evaluation.own_samples`), per-group agreement and next-byte
agreement (:mod:`gold.evaluation.agreement`), the ``gold eval`` run (:mod:`gold.evaluation.run`) and the training
callback that scores a held-out set (:mod:`gold.evaluation.callback`).

Evaluation sits below training: the trainer uses its callback, and nothing here imports ``gold.training``.
Imports: alignment, models, data, losses, rollout, teacher and this wing.
"""
