"""gold: cross-tokenizer knowledge distillation."""

from gold.zoo import ZooPackageMissing, load_model, load_tokenizer, tokenizer_names

__all__ = ["ZooPackageMissing", "load_model", "load_tokenizer", "tokenizer_names"]
