"""Small models of real architectures, built locally: random weights, a real chat template, no hub.

`build_tiny_model` writes an ordinary transformers model directory (config.json, model.safetensors,
generation_config.json, tokenizer files) that `AutoModelForCausalLM` / `AutoTokenizer` load like
any downloaded model. The tokenizer is either a byte-level BPE trained here with `tokenizers` (on
your texts, or by default on the built-in text-to-SQL example) with a ChatML template like Qwen's,
or a copy of an existing tokenizer directory, e.g. one of the real ones in ../shared/fixtures.

Same arguments and seed, same weights and same tokenizer: tests can compare runs across builds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Arch = Literal["llama", "qwen2"]
Preset = Literal["tiny", "small", "medium"]

PAD_TOKEN = "<|endoftext|>"
BOS_OF_TURN = "<|im_start|>"
END_OF_TURN = "<|im_end|>"  # also the EOS: generation stops where an assistant turn ends
SPECIAL_TOKENS = (PAD_TOKEN, BOS_OF_TURN, END_OF_TURN)
# ChatML as Qwen2.5 writes it, without Qwen's injected default system prompt and tool blocks. The
# assistant content and its end-of-turn token sit inside {% generation %}, so transformers'
# `return_assistant_tokens_mask=True` marks exactly the tokens a fine-tune should learn.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Files that make up a tokenizer directory (copied for `tokenizer_from`; weights and configs are not).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)
TINY_MODEL_CARD = """---
license: apache-2.0
library_name: transformers
---
# A tiny {arch} ({preset} preset) built by `tunesmith model tiny`

Random weights and a locally trained tokenizer, for tests and the demo. Apache-2.0, like tunesmith.
"""


@dataclass(frozen=True)
class Dims:
    vocab_size: int
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate_size: int
    max_position_embeddings: int = 2048  # RoPE has no weights: a long context costs nothing to build


# Parameter counts are for the Llama architecture with the preset vocabulary, embeddings tied.
PRESETS: dict[str, Dims] = {
    "tiny": Dims(vocab_size=4096, hidden_size=128, layers=4, heads=4, kv_heads=2, intermediate_size=384),  # 1.3M: tests
    "small": Dims(
        vocab_size=8192, hidden_size=384, layers=8, heads=6, kv_heads=2, intermediate_size=1024
    ),  # 15.7M: demo
    "medium": Dims(
        vocab_size=32000, hidden_size=768, layers=12, heads=12, kv_heads=4, intermediate_size=2304
    ),  # 107M: bench
}


def texts_from_jsonl(path: str | Path) -> list[str]:
    """Every message text of a messages JSONL file (a tokenizer corpus). Lines that are not JSON
    objects with a `messages` list are skipped: a corpus needs no validation."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            messages = row.get("messages") if isinstance(row, dict) else None
            for m in messages if isinstance(messages, list) else ():
                if isinstance(m, dict) and isinstance(m.get("content"), str):
                    texts.append(m["content"])
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, max_length: int = 2048) -> Any:
    """A byte-level BPE (any text encodes, no unknown token) with ChatML special tokens and
    template, as a `PreTrainedTokenizerFast`: eos `<|im_end|>`, pad `<|endoftext|>`, no BOS."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=END_OF_TURN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[BOS_OF_TURN],
        chat_template=CHATML_TEMPLATE,
        model_max_length=max_length,
    )


def _copy_tokenizer(src: str | Path, dst: Path) -> Any:
    from transformers import AutoTokenizer

    src = Path(src)
    copied = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    if not copied:
        raise FileNotFoundError(
            f"tokenizer_from {src}: no tokenizer files in it (expected one of {', '.join(TOKENIZER_FILES)})"
        )
    # Copied byte for byte: the tokenizer keeps its quirks (double BOS, pad == eos, ...), which are
    # what the data stage's checks are tested against.
    for name in copied:
        shutil.copyfile(src / name, dst / name)
    return AutoTokenizer.from_pretrained(dst)


def model_config(
    arch: Arch,
    dims: Dims,
    *,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> Any:
    """The transformers config of a model with these dimensions (embeddings tied, as in small
    Llama 3.2 and Qwen2.5 models)."""
    from transformers import LlamaConfig, Qwen2Config

    if dims.hidden_size % dims.heads or dims.heads % dims.kv_heads:
        raise ValueError(
            f"heads={dims.heads} must divide hidden_size={dims.hidden_size}, and kv_heads={dims.kv_heads} must divide heads"
        )
    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config}
    if arch not in classes:
        raise ValueError(f"arch {arch!r}: expected one of {sorted(classes)}")
    return classes[arch](
        vocab_size=dims.vocab_size,
        hidden_size=dims.hidden_size,
        intermediate_size=dims.intermediate_size,
        num_hidden_layers=dims.layers,
        num_attention_heads=dims.heads,
        num_key_value_heads=dims.kv_heads,
        max_position_embeddings=dims.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def parameter_count(preset: Preset = "tiny", arch: Arch = "llama") -> int:
    """Parameters of a preset (with its vocabulary size), counted without allocating them."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(arch, PRESETS[preset]))
    return sum(p.numel() for p in model.parameters())


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Put the finished `tmp` where `out_dir` is, so no half-built model is ever at `out_dir`."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old)


def build_tiny_model(
    out_dir: str | Path,
    *,
    preset: Preset = "tiny",
    arch: Arch = "llama",
    texts: Sequence[str] | None = None,
    tokenizer_from: str | Path | None = None,
    vocab_size: int | None = None,
    hidden_size: int | None = None,
    layers: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised `arch` model with `preset` dimensions (each overridable) and
    its tokenizer to `out_dir` (replaced as a whole); returns `out_dir`.

    The tokenizer: a copy of `tokenizer_from` (the model's vocabulary then follows it), else a BPE
    trained on `texts` up to `vocab_size` tokens (`tunesmith.examples.text2sql.example_texts()` is
    the built-in example's; models do not depend on examples, so the caller passes it)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r}: expected one of {sorted(PRESETS)}")
    overrides = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
    )
    dims = dataclasses.replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    if texts is None and tokenizer_from is None:
        raise ValueError(
            "build_tiny_model needs `texts` to train its tokenizer on (e.g. texts_from_jsonl(your data), or "
            "tunesmith.examples.text2sql.example_texts()) or `tokenizer_from` (a tokenizer directory to copy)"
        )
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        if tokenizer_from is not None:
            tokenizer = _copy_tokenizer(tokenizer_from, tmp)
            dims = dataclasses.replace(dims, vocab_size=len(tokenizer))
            stop_ids = [tokenizer.eos_token_id]
        else:
            tokenizer = train_tokenizer(texts, dims.vocab_size, max_length=dims.max_position_embeddings)
            tokenizer.save_pretrained(tmp)
            # A small corpus may run out of merges below the requested size: the embedding keeps
            # the requested rows (as Qwen's keeps unused ones), never fewer than the tokenizer's.
            dims = dataclasses.replace(dims, vocab_size=max(dims.vocab_size, len(tokenizer)))
            stop_ids = [tokenizer.convert_tokens_to_ids(END_OF_TURN), tokenizer.convert_tokens_to_ids(PAD_TOKEN)]
        config = model_config(
            arch,
            dims,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id
        )
        model.save_pretrained(tmp)  # safetensors
        # A model card with a licence: `tunesmith train` refuses models whose licence it cannot find.
        (tmp / "README.md").write_text(TINY_MODEL_CARD.format(arch=arch, preset=preset), encoding="utf-8")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
