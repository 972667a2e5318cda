"""Cross-tokenizer losses: pure tensor functions with shapes in their docstrings."""

from gold.data.batch import AlignedBatch, GroupShifts, PairTables
from gold.losses.byte_marginal import byte_marginal, first_byte_table, fold_to_bytes
from gold.losses.composite import cross_tokenizer_loss
from gold.losses.divergences import forward_kl, generalized_jsd, reverse_kl
from gold.losses.hybrid import HybridParts, hybrid
from gold.losses.merge import GroupIndex, GroupRows, group_logprobs, index_groups, rows_of, with_rest_bucket
from gold.losses.projection import projection
from gold.losses.reduce import NonFiniteLossError, check_finite, reduce_rows
from gold.losses.span import span_likelihood
from gold.losses.uld import uld, uld_topk, uld_topk_error_bound
from gold.losses.uld_quantized import uld_quantized

__all__ = [
    "AlignedBatch",
    "GroupIndex",
    "GroupRows",
    "GroupShifts",
    "HybridParts",
    "NonFiniteLossError",
    "PairTables",
    "byte_marginal",
    "check_finite",
    "cross_tokenizer_loss",
    "first_byte_table",
    "fold_to_bytes",
    "forward_kl",
    "generalized_jsd",
    "group_logprobs",
    "hybrid",
    "index_groups",
    "projection",
    "reduce_rows",
    "reverse_kl",
    "rows_of",
    "span_likelihood",
    "uld",
    "uld_quantized",
    "uld_topk",
    "uld_topk_error_bound",
    "with_rest_bucket",
]
