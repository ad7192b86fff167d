"""Import a GGUF file (llama.cpp's format) as a standard transformers model directory.

transformers can read a GGUF file (`from_pretrained(dir, gguf_file=...)`): it dequantises every
tensor to float and converts the tokenizer, chat template included. Two things stop that model from
being a base for tunesmith: it takes ~20 s to dequantise on every load, and `save_pretrained`
refuses it ("quantized with gguf and is not serializable"), so neither a merged fine-tune nor the
base itself can be saved. `import_gguf` does the conversion once and writes an ordinary directory
(safetensors in float32, config, generation config, tokenizer), which every later stage loads as it
would any local model.

The weights are what the GGUF holds, dequantised: a fine-tune of an imported Q4_1 file starts from
the Q4_1 rounding of the original weights, not from the original bf16. The import says so, and
records the source file and its quantisation types in IMPORT_INFO_FILE.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.runs import IMPORT_INFO_FILE, atomic_open

GGUF_SUFFIX = ".gguf"


class GGUFImportError(ValueError):
    """The GGUF file cannot be imported; the message says why and what to do instead."""


@dataclass
class ImportedModel:
    """What `import_gguf` wrote, and what the weights were before dequantisation."""

    path: Path
    source: str  # the GGUF file
    architecture: str  # GGUF's name for it, e.g. "llama"
    model_type: str  # transformers' config.model_type
    parameters: int
    # GGML tensor type -> number of weights stored in it, largest first, e.g. {"Q4_1": 106M, "F32": 28M}
    quantization: dict[str, int] = field(default_factory=dict)

    @property
    def dequantized_from(self) -> str:
        """The quantised types the weights came from ("Q4_1"), or "none" for a float-only file."""
        quantised = [name for name in self.quantization if name not in _FLOAT_TYPES]
        return ", ".join(quantised) or "none"

    def summary(self) -> str:
        origin = (
            f"dequantised from {self.dequantized_from} to float32: a fine-tune starts from these rounded weights, "
            "not from the original ones"
            if self.dequantized_from != "none"
            else "stored as floats in the GGUF file, copied as they are"
        )
        return (
            f"imported {self.source} → {self.path}\n"
            f"  {self.model_type} ({self.architecture}), {self.parameters / 1e6:.1f}M parameters; weights {origin}"
        )


_FLOAT_TYPES = {"F32", "F16", "BF16"}


def find_gguf(src: str | Path) -> Path:
    """The GGUF file `src` names: the file itself, or the only *.gguf in a directory."""
    path = Path(src).expanduser()
    if path.is_file():
        if path.suffix.lower() != GGUF_SUFFIX:
            raise GGUFImportError(f"{path}: not a {GGUF_SUFFIX} file")
        return path
    if path.is_dir():
        found = sorted(path.glob(f"*{GGUF_SUFFIX}"))
        if len(found) == 1:
            return found[0]
        if not found:
            raise GGUFImportError(f"{path}: no {GGUF_SUFFIX} file in this directory")
        names = ", ".join(p.name for p in found)
        raise GGUFImportError(f"{path}: {len(found)} {GGUF_SUFFIX} files ({names}); name the one to import")
    raise GGUFImportError(f"{path}: no such file or directory")


def inspect_gguf(path: Path) -> tuple[str, dict[str, int]]:
    """(architecture, {tensor type: weights}) from the file's header, checked against what this
    transformers and gguf can convert, before any tensor is dequantised."""
    try:
        from gguf import GGUFReader
        from gguf.quants import _type_traits  # the types gguf can dequantise (besides F32/F16)
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError as e:
        raise GGUFImportError(f"importing a GGUF file needs the gguf package: pip install 'gguf>=0.10' ({e})") from e
    try:
        reader = GGUFReader(path)
    except Exception as e:  # a truncated or foreign file fails deep inside numpy's memmap
        raise GGUFImportError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    arch_field = reader.fields.get("general.architecture")
    if arch_field is None:
        raise GGUFImportError(f"{path}: the GGUF header has no general.architecture")
    architecture = bytes(arch_field.parts[arch_field.data[0]]).decode("utf-8")
    # transformers renames a few of llama.cpp's spellings (qwen2moe → qwen2_moe, gpt-oss → gpt_oss).
    spellings = {architecture, architecture.replace("-", "_"), re.sub(r"moe$", "_moe", architecture)}
    if not spellings & set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}:
        supported = ", ".join(sorted(GGUF_SUPPORTED_ARCHITECTURES))
        raise GGUFImportError(
            f"{path}: architecture {architecture!r} is not one transformers can load from GGUF "
            f"(it reads: {supported}). Use the original checkpoint (safetensors) instead."
        )
    weights: Counter[str] = Counter()
    for tensor in reader.tensors:
        weights[tensor.tensor_type.name] += int(tensor.n_elements)
    readable = {"F32", "F16"} | {qtype.name for qtype in _type_traits}  # as gguf.quants.dequantize reads
    unsupported = sorted(set(weights) - readable)
    if unsupported:
        raise GGUFImportError(
            f"{path}: quantisation type {', '.join(unsupported)} cannot be dequantised by the installed gguf "
            f"package (it reads {', '.join(sorted(readable))}). Upgrade it (pip install -U gguf) or use a file "
            "quantised differently (Q8_0, Q4_K_M, ...)."
        )
    return architecture, dict(weights.most_common())


def import_gguf(src: str | Path, out_dir: str | Path) -> ImportedModel:
    """Convert a GGUF file (or the directory holding exactly one) into a transformers directory at
    `out_dir`: model.safetensors (float32), config.json, generation_config.json, the tokenizer with
    its chat template, and IMPORT_INFO_FILE. Written into a temporary sibling and renamed, so
    `out_dir` is either complete or absent. Raises GGUFImportError for an unreadable file, an
    unsupported architecture or quantisation type, or an `out_dir` that is not empty."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = find_gguf(src).resolve()
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GGUFImportError(f"{out}: already exists and is not empty; remove it or choose another directory")
    architecture, quantization = inspect_gguf(gguf_path)

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            dtype=torch.float32,
            use_kernels=False,  # no Hub kernels: see models/load.py
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, NotImplementedError, KeyError) as e:  # what transformers raises for what it cannot map
        raise GGUFImportError(f"{gguf_path}: transformers cannot convert it: {e}") from None
    model = _without_gguf_quantizer(loaded)
    _stop_on_end_of_turn(model, tokenizer)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        result = ImportedModel(
            path=out,
            source=str(gguf_path),
            architecture=architecture,
            model_type=model.config.model_type,
            parameters=sum(p.numel() for p in model.parameters()),
            quantization=quantization,
        )
        info = {**asdict(result), "path": None, "dequantized_from": result.dequantized_from}
        with atomic_open(tmp / IMPORT_INFO_FILE) as f:
            json.dump(info, f, indent=2)
        _readable_like_any_output(tmp)
        if out.is_dir():  # empty (checked above): os.replace onto an empty directory is allowed
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _without_gguf_quantizer(model: Any) -> Any:
    """The same weights in a model built from the config minus its `quantization_config`: a model
    loaded from GGUF carries a gguf quantizer that makes `save_pretrained` refuse it, although its
    weights are plain float tensors by now."""
    from transformers import AutoModelForCausalLM

    config = model.config
    with contextlib.suppress(AttributeError):
        del config.quantization_config
    config.name_or_path = ""  # GGUF's general.name ("Smollm2 135M 8k ..."), which is no hub id
    fresh = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    # A tied output head is not in the state dict of some models; anything else missing is a bug.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise GGUFImportError(f"rebuilding the model lost weights: missing {missing[:5]}, unexpected {unexpected[:5]}")
    fresh.generation_config = model.generation_config
    fresh.eval()
    return fresh


def _stop_on_end_of_turn(model: Any, tokenizer: Any) -> None:
    """The GGUF's EOS is what `generate` stops on; make sure the tokenizer's EOS (for ChatML files,
    `<|im_end|>`, which ends every assistant turn) is among the generation config's stop ids."""
    eos = tokenizer.eos_token_id
    if eos is None:
        return
    current = model.generation_config.eos_token_id
    ids = list(current) if isinstance(current, list) else [] if current is None else [current]
    if eos not in ids:
        model.generation_config.eos_token_id = [*ids, eos] if ids else eos
    if model.generation_config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _readable_like_any_output(directory: Path) -> None:
    """mkdtemp makes a 0700 directory (and safetensors some 0600 files): a model directory should
    read like any other output, e.g. for a second user or a container sharing the cache."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)
