"""Byte-exact token alignment between two tokenizers. Imports nothing from ``gold``."""

from alignment.align import Alignment, align_batch, align_ids, align_text_batch, align_texts, normalized, text_stream
from alignment.bytespans import (
    TokenBytesTable,
    TokenizerBytesError,
    build_token_bytes_table,
    token_byte_spans,
    token_bytes_table,
)
from alignment.identical import align_identical, same_vocabulary
from alignment.render import escape_controls, format_stats, html_page, render_html, render_text
from alignment.shifted import GroupShift, ShiftedPairs, group_shifts
from alignment.specials import encode_continuation, encode_text
from alignment.stats import AlignmentStats
from alignment.vocab import NearMatch, VocabMap, raw_string_overlap

__all__ = [
    "Alignment",
    "AlignmentStats",
    "GroupShift",
    "NearMatch",
    "ShiftedPairs",
    "TokenBytesTable",
    "TokenizerBytesError",
    "VocabMap",
    "align_batch",
    "align_identical",
    "align_ids",
    "align_text_batch",
    "align_texts",
    "build_token_bytes_table",
    "encode_continuation",
    "encode_text",
    "escape_controls",
    "format_stats",
    "group_shifts",
    "html_page",
    "normalized",
    "raw_string_overlap",
    "render_html",
    "render_text",
    "same_vocabulary",
    "text_stream",
    "token_byte_spans",
    "token_bytes_table",
]
