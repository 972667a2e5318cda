"""Models, tokenizers and datasets named by hub id (``Qwen/Qwen2.5-0.5B-Instruct``), as transformers users expect.

Loading goes through ``from_pretrained`` / ``datasets.load_dataset``: it downloads when the machine is online and
reads the local Hugging Face cache otherwise (``HF_HUB_OFFLINE=1``, ``HF_HOME``). Offline and not cached, the error
is one line that names the id and the one command that fetches it. A repository that ships its own code is refused
unless the recipe sets ``trust_remote_code: true`` (transformers refuses it without running anything).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubError(ValueError):
    """A hub id that could not be loaded; the message names the id and the fix."""


LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt", ".yaml", ".safetensors", ".bin")


def is_hub_id(name: str) -> bool:
    """``org/name``, and not a local path mistyped: a file suffix (``data/train.jsonl``) or a first folder that
    exists here (``out/run`` when ``out/`` exists) means a path, which the caller reports as missing."""
    if not HUB_ID.match(name) or ".." in name or name.lower().endswith(LOCAL_SUFFIXES):
        return False
    return not Path(name.split("/")[0]).is_dir()


def _explain(kind: str, name: str, err: Exception, *, repo_type: str = "") -> HubError:
    text = " ".join(str(err).split())
    if "trust_remote_code" in text:
        return HubError(f"{kind} {name!r} ships its own code; gold runs it only if the recipe sets "
                        "trust_remote_code: true for it (that code then runs with your permissions)")  # fmt: skip
    flag = f" --repo-type {repo_type}" if repo_type else ""
    offline = "connect" in text or "offline" in text.lower() or "cached" in text
    reason = "the hub cannot be reached and it is not in the local cache" if offline else text[:200]
    return HubError(f"{kind} {name!r} is not a local folder, and as a hub id it could not be loaded ({reason}); "
                    f"fetch it once where the hub is reachable: hf download{flag} {name} (it lands in "
                    "the cache gold reads, HF_HOME)")  # fmt: skip


def hub_tokenizer(name: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _explain("tokenizer", name, err) from None


def hub_model(name: str, *, dtype: Any = None, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained(name, ...)`` (``kwargs``: ``revision``, ``attn_implementation``)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(name, dtype=dtype or "auto", trust_remote_code=trust_remote_code,
                                                    **kwargs)  # fmt: skip
    except (OSError, ValueError) as err:
        raise _explain("model", name, err) from None


def hub_dataset(name: str, *, config: str | None, split: str, streaming: bool) -> Any:
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split, streaming=streaming)
    except (OSError, ValueError, ConnectionError) as err:
        raise _explain("dataset", name, err, repo_type="dataset") from None
