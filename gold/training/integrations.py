"""What a run asks of the world outside it, checked before any model loads (issue 30, item 5).

Each of these otherwise fails late and long: ``report_to: [wandb]`` without wandb when the Trainer starts (~25
lines of traceback), ``push_to_hub`` with no token or no network when the Trainer creates its repo (~80 lines), and
an FSDP accelerate config on a machine without GPUs does not fail at all (accelerate enables FSDP on GPUs only, so
the run goes on as plain DDP). Here each is one :class:`gold.config.RecipeError` (or
:class:`gold.extras.MissingExtra`) line that names the setting and the fix.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from gold.config import RecipeError
from gold.extras import require

HUB_TIMEOUT_S = 5.0  # one short request: a hub that does not answer in 5 s will not take a checkpoint either
# accelerate launch's variables for the distributed modes it runs on GPUs only
GPU_ONLY_MODES = {"ACCELERATE_USE_FSDP": "FSDP"}


def check_integrations(args: Any, *, environ: Mapping[str, str] = os.environ) -> None:
    """Refuses, in one line, a run whose reporting, hub push or accelerate launch cannot work here.

    Args:
        args: the run's ``transformers.TrainingArguments``.
        environ: the process environment (accelerate launch passes its config through it).
    """
    if "wandb" in args.report_to:
        require("wandb", feature="training.report_to: [wandb]")
    if args.push_to_hub:
        check_hub(args.hub_token)
    check_accelerate(environ)


def check_hub(token: str | None) -> None:
    """A token is set (``token``, else ``HF_TOKEN`` or ``hf auth login``'s file) and the hub answers it."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise RecipeError("training.push_to_hub is set, and HF_HUB_OFFLINE=1 keeps this run off the hub: unset "
                          "HF_HUB_OFFLINE, or set training.push_to_hub=false")  # fmt: skip
    token = token or get_token()
    if token is None:
        raise RecipeError("training.push_to_hub needs a Hugging Face token, and none is set: run `hf auth login` or "
                          "set HF_TOKEN (or set training.push_to_hub=false)")  # fmt: skip
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    request = urllib.request.Request(f"{endpoint}/api/whoami-v2", headers={"authorization": f"Bearer {token}"})
    try:
        urllib.request.urlopen(request, timeout=HUB_TIMEOUT_S).close()
    except urllib.error.HTTPError as err:
        fix = "run `hf auth login` with a token that can write" if err.code in (401, 403) else "try again later"
        raise RecipeError(f"training.push_to_hub: the hub at {endpoint} refused the token (HTTP {err.code}): {fix} "
                          "(or set training.push_to_hub=false)") from None  # fmt: skip
    except OSError as err:  # URLError, a timeout, a refused connection
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        raise RecipeError(f"training.push_to_hub is set, and the hub at {endpoint} did not answer ({reason}): check "
                          "the network (or HF_ENDPOINT), or set training.push_to_hub=false") from None  # fmt: skip


def check_accelerate(environ: Mapping[str, str]) -> None:
    """An accelerate launch that asks for a GPU-only mode (FSDP) on a machine without CUDA."""
    import torch

    asked = [(name, mode) for name, mode in GPU_ONLY_MODES.items() if environ.get(name, "").lower() == "true"]
    if asked and not torch.cuda.is_available():
        name, mode = asked[0]
        raise RecipeError(f"the accelerate config asks for {mode} ({name}=true), which accelerate runs on GPUs only, "
                          "and torch sees no CUDA device here, so it would run as plain DDP: launch on a GPU machine, "
                          "or on CPU with `accelerate launch --multi_gpu --num_processes N` (gloo)")  # fmt: skip
