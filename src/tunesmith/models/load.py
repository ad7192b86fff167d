"""Load a base model the way transformers does, with two guard rails and one clear error.

* Weights load from safetensors only: a pickled `pytorch_model.bin` can run code when unpickled,
  so a directory that has only those is refused, with the one-line conversion that fixes it.
* `trust_remote_code` stays False unless the config says otherwise: running a repository's Python
  is the user's explicit decision.
* A name that is neither a local directory nor reachable on the hub fails in about a second with
  one sentence, instead of ~45 s of download retries and a 40-line traceback.

LoRA/QLoRA wrapping is the training stage's job; this module only loads.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import torch

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Quantization = Literal["4bit", "8bit"]
# What a hub id looks like ("gpt2", "Qwen/Qwen2.5-0.5B-Instruct"); anything else is a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")


class ModelLoadError(OSError):
    """The model cannot be loaded; the message says why and how to fix it. An OSError, as
    transformers raises for the same cases, so callers that catch those keep working."""


def resolve_dtype(dtype: Dtype | torch.dtype = "auto") -> torch.dtype:
    """`auto`: bfloat16 on a CUDA device that computes in it (Ampere or newer), else float32.
    float16 is never chosen for you: without loss scaling it overflows in training."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":  # on CPUs, bf16 comes as autocast over fp32 weights (train.mixed_precision)
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype!r}: expected auto, float32, bfloat16 or float16") from None


def native_bf16() -> bool:
    """Does this machine compute bfloat16 in hardware? A CUDA GPU of Ampere or newer, or a CPU
    with AMX or AVX512-BF16. Elsewhere bf16 is emulated and slower than float32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    # Private but stable since torch 2.3; missing means an old or non-x86 build: say no.
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(probe() for probe in probes if probe is not None)


def hub_reachable(timeout_s: float = 2.0) -> bool:
    """Can we open a connection to the hub? False at once in offline mode (HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def locate(name_or_path: str | Path) -> tuple[str, bool]:
    """(what to pass to `from_pretrained`, whether to stay off the network). A built-in name
    (tunesmith.models.builtin) becomes its cached directory, imported on first use. A local directory is
    used as it is; a hub id goes to the hub when it answers, else to the local cache alone, and
    without either this raises at once (transformers would retry downloads for ~45 s)."""
    from huggingface_hub import try_to_load_from_cache

    from tunesmith.models.builtin import resolve_name

    text = resolve_name(name_or_path)  # a built-in name (smollm2-135m-instruct) → its cached import
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path), True
    if path.exists():
        raise ModelLoadError(f"could not load {text}: a file, not a model directory")
    if not _HUB_ID.fullmatch(text) or text.startswith("."):
        raise ModelLoadError(f"could not load {text}: no such directory")
    if hub_reachable():
        return text, False
    if isinstance(try_to_load_from_cache(text, "config.json"), str):
        return text, True
    raise ModelLoadError(
        f"could not load {text}: no network and not in the local cache: give a local directory "
        "(or run once with network access to fill the cache)"
    )


def _check_weights(directory: Path) -> None:
    if any(directory.glob("*.safetensors")) or (directory / "model.safetensors.index.json").is_file():
        return
    pickled = [name for name in _PICKLE_WEIGHTS if (directory / name).is_file()]
    if pickled:
        raise ModelLoadError(
            f"could not load {directory}: it has only pickled weights ({', '.join(pickled)}), and tunesmith loads "
            "safetensors only (unpickling can run code). Convert once, in an environment you trust: "
            "AutoModelForCausalLM.from_pretrained(DIR, use_safetensors=False).save_pretrained(DIR)"
        )
    raise ModelLoadError(f"could not load {directory}: no model.safetensors (or sharded *.safetensors) in it")


def _quantization_config(quantization: Quantization, compute_dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        # NF4 with double quantization: the QLoRA paper's recipe (~0.5 byte per weight).
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization {quantization!r}: expected 4bit, 8bit or None")


def load_model(
    name_or_path: str | Path,
    *,
    dtype: Dtype | torch.dtype = "auto",
    trust_remote_code: bool = False,
    device_map: str | dict[str, Any] | None = None,
    quantization: Quantization | None = None,
) -> Any:
    """`AutoModelForCausalLM.from_pretrained` for a hub id or a local directory, safetensors only.
    Raises ModelLoadError with one sentence for a missing path, an unreachable hub or pickled weights."""
    from transformers import AutoModelForCausalLM

    source, offline = locate(name_or_path)
    if Path(source).is_dir():
        _check_weights(Path(source))
    torch_dtype = resolve_dtype(dtype)
    # transformers does not pass local_files_only on to its adapter lookup, which would retry the hub.
    kwargs: dict[str, Any] = {"adapter_kwargs": {"local_files_only": True}} if offline else {}
    if quantization is not None:
        kwargs["quantization_config"] = _quantization_config(quantization, torch_dtype)
    try:
        return AutoModelForCausalLM.from_pretrained(
            source,
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            device_map=device_map,
            use_safetensors=True,
            local_files_only=offline,
            # transformers >= 5.2x swaps layers for compiled kernels it downloads from the Hub when the
            # `kernels` package is installed: remote binaries (off, like remote code), and offline a crash
            # at the first model.train().
            use_kernels=False,
            **kwargs,
        )
    except OSError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load {source}: {first_line}") from e
