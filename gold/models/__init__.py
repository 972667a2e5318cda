"""Where models and tokenizers come from (the first wing of the flow after ``alignment/``).

The offline zoo (:mod:`gold.models.zoo`, tokenizers built from tiktoken ranks in :mod:`gold.models.tiktoken_ranks`),
hub ids and folders (:mod:`gold.models.hub`), building a recipe's model and tokenizer (:mod:`gold.models.build`:
zoo names, folders, hub ids, ``tiny`` random models), chat templates (:mod:`gold.models.chat`), stop rules
(:mod:`gold.models.stops`) and sharding of frozen models (:mod:`gold.models.sharding`).

Imports: ``alignment``, ``gold.config``, ``gold.extras``, ``gold.version`` and this wing only.
"""
