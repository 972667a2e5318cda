"""Rows → examples → aligned, collated batches.

Rows from files or ``datasets`` (:mod:`gold.data.files`), examples with each side's prompt, seam and end
(:mod:`gold.data.examples`), the batch the losses read and the per-pair tables it is built with
(:mod:`gold.data.batch`), and the collator that aligns both sides' tokenizations of the same bytes
(:mod:`gold.data.collate`).

Imports: ``alignment``, the leaves (``gold.config``, ``gold.extras``, ``gold.version``), ``gold.models`` and this
wing only.
"""
