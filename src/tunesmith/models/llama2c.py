"""Convert a llama2.c checkpoint (karpathy's legacy `.bin`) and its `tok*.bin` vocabulary into an
ordinary transformers model directory: `LlamaForCausalLM` weights as safetensors, a fast tokenizer
with a chat template, and a generation config.

This is how a real pretrained model reaches machines without a model hub: stories260K (264k
parameters, trained on TinyStories) converts in well under a second and then loads with
`AutoModelForCausalLM` / `AutoTokenizer` like any hub model.

Two conventions differ between llama2.c and transformers and are the whole difficulty:
- RoPE: llama2.c rotates interleaved pairs (x0,x1),(x2,x3)...; transformers' `rotate_half` rotates
  the first half of each head against the second. The q/k rows are permuted to match (the same
  permutation as transformers' `convert_llama_weights_to_hf.py`).
- Tokenizer pieces store spaces as " " and BOS/EOS as "\\n<s>\\n" / "\\n</s>\\n"; the sentencepiece
  convention transformers expects is "▁" and "<s>" / "</s>".
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.tokenization_utils_base import generate_merges

HEADER_FORMAT = "<7i"  # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
HEADER_BYTES = struct.calcsize(HEADER_FORMAT)
# llama2.c's newer export versions start with this magic ("ak42"); only the legacy layout is read.
VERSIONED_MAGIC = 0x616B3432
ROPE_THETA = 10000.0  # llama2.c hard-codes it; checked against the file's stored frequencies
RMS_NORM_EPS = 1e-5  # llama2.c's run.c and model.py both use 1e-5

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
SPECIAL_PIECES = (UNK, BOS, EOS)  # ids 0, 1, 2 in every llama2.c vocabulary
N_BYTE_PIECES = 256  # ids 3..258: "<0x00>".."<0xFF>", sentencepiece's byte fallback
SPACE = "▁"  # U+2581, sentencepiece's visible space

# Plain role headers: a 512-piece story model knows no special chat tokens, and new ones would be
# untrained embeddings. The space before an answer sits inside the trained span and the prompt ends
# at "Assistant:", because every word piece in this vocabulary starts with its space ("▁Once"): a
# prompt ending in a bare space would force an answer to start with a piece it never saw there.
# {% generation %} marks what `return_assistant_tokens_mask` reports as assistant tokens.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ 'System: ' + message['content'] + '\n' }}"
    "{%- elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n' }}"
    "{%- elif message['role'] == 'assistant' %}{{ 'Assistant:' }}"
    "{%- generation %}{{ ' ' + message['content'] + eos_token }}{%- endgeneration %}"
    "{%- else %}{{ raise_exception('this template knows system, user and assistant, not ' + message['role']) }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ 'Assistant:' }}{%- endif %}"
)


class Llama2cFormatError(ValueError):
    """A llama2.c file that cannot be read; the message names the file and what was expected."""


@dataclass(frozen=True)
class Llama2cHeader:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool  # llama2.c stores a negative vocab_size when the classifier is separate

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_size


def read_header(path: Path, data: bytes) -> Llama2cHeader:
    if len(data) < HEADER_BYTES:
        raise Llama2cFormatError(f"{path}: {len(data)} bytes is too short for a llama2.c checkpoint header")
    if struct.unpack_from("<I", data)[0] == VERSIONED_MAGIC:
        raise Llama2cFormatError(
            f"{path}: this is a versioned llama2.c export (magic 'ak42'); only the legacy format is "
            "supported - re-export it with `export.py --version 0`"
        )
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = struct.unpack_from(HEADER_FORMAT, data)
    header = Llama2cHeader(dim, hidden_dim, n_layers, n_heads, n_kv_heads, abs(vocab_size), seq_len, vocab_size > 0)
    if min(dim, hidden_dim, n_layers, n_heads, n_kv_heads, header.vocab_size, seq_len) <= 0:
        raise Llama2cFormatError(f"{path}: header {header} has a non-positive size; not a llama2.c checkpoint")
    if dim % n_heads or n_heads % n_kv_heads or header.head_size % 2:
        raise Llama2cFormatError(
            f"{path}: dim={dim}, n_heads={n_heads}, n_kv_heads={n_kv_heads} do not split into even-sized heads"
        )
    return header


def _weight_shapes(h: Llama2cHeader) -> list[tuple[str, tuple[int, ...]]]:
    """The tensors of a legacy checkpoint, in file order (llama2.c's `checkpoint_init_weights`)."""
    L = h.n_layers
    shapes = [
        ("token_embedding", (h.vocab_size, h.dim)),
        ("rms_att", (L, h.dim)),
        ("wq", (L, h.dim, h.dim)),
        ("wk", (L, h.kv_dim, h.dim)),
        ("wv", (L, h.kv_dim, h.dim)),
        ("wo", (L, h.dim, h.dim)),
        ("rms_ffn", (L, h.dim)),
        ("w1", (L, h.hidden_dim, h.dim)),
        ("w2", (L, h.dim, h.hidden_dim)),
        ("w3", (L, h.hidden_dim, h.dim)),
        ("rms_final", (h.dim,)),
        ("freq_cis_real", (h.seq_len, h.head_size // 2)),
        ("freq_cis_imag", (h.seq_len, h.head_size // 2)),
    ]
    if not h.shared_classifier:
        shapes.append(("wcls", (h.vocab_size, h.dim)))
    return shapes


def read_checkpoint(path: str | Path) -> tuple[Llama2cHeader, dict[str, torch.Tensor]]:
    """The header and the float32 tensors of a legacy llama2.c checkpoint, by llama2.c's names."""
    path = Path(path)
    data = path.read_bytes()
    header = read_header(path, data)
    shapes = _weight_shapes(header)
    n_floats = sum(torch.Size(shape).numel() for _, shape in shapes)
    expected = HEADER_BYTES + 4 * n_floats
    if len(data) != expected:
        raise Llama2cFormatError(
            f"{path}: {len(data)} bytes, but header {header} implies {expected} "
            "(7 int32 header + float32 weights); the file is truncated or not a legacy llama2.c checkpoint"
        )
    # bytearray: torch.frombuffer wants a writable buffer; one 4-byte copy per float is cheap here.
    flat = torch.frombuffer(bytearray(data), dtype=torch.float32, offset=HEADER_BYTES)
    tensors, offset = {}, 0
    for name, shape in shapes:
        n = torch.Size(shape).numel()
        tensors[name] = flat[offset : offset + n].view(shape).clone()
        offset += n
    _check_rope_theta(path, header, tensors["freq_cis_real"], tensors["freq_cis_imag"])
    return header, tensors


def _check_rope_theta(path: Path, h: Llama2cHeader, real: torch.Tensor, imag: torch.Tensor) -> None:
    """The file stores the RoPE table it was trained with; a mismatch with theta=10000 would make
    the converted model silently wrong, so it is an error."""
    freqs = 1.0 / ROPE_THETA ** (torch.arange(0, h.head_size, 2).float() / h.head_size)
    angles = torch.outer(torch.arange(h.seq_len).float(), freqs)
    if not (torch.allclose(real, angles.cos(), atol=1e-4) and torch.allclose(imag, angles.sin(), atol=1e-4)):
        raise Llama2cFormatError(f"{path}: the stored RoPE frequencies do not match rope theta {ROPE_THETA}")


def permute_for_rotate_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the output rows of a q/k projection from llama2.c's interleaved RoPE pairs to
    transformers' half-split `rotate_half` layout (transformers' convert_llama_weights_to_hf)."""
    dim1, dim2 = w.shape
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def to_hf_state_dict(h: Llama2cHeader, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename llama2.c tensors to `LlamaForCausalLM` keys (w1=gate, w3=up, w2=down)."""
    sd = {"model.embed_tokens.weight": t["token_embedding"], "model.norm.weight": t["rms_final"]}
    for i in range(h.n_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = t["rms_att"][i]
        sd[p + "self_attn.q_proj.weight"] = permute_for_rotate_half(t["wq"][i], h.n_heads)
        sd[p + "self_attn.k_proj.weight"] = permute_for_rotate_half(t["wk"][i], h.n_kv_heads)
        sd[p + "self_attn.v_proj.weight"] = t["wv"][i]
        sd[p + "self_attn.o_proj.weight"] = t["wo"][i]
        sd[p + "post_attention_layernorm.weight"] = t["rms_ffn"][i]
        sd[p + "mlp.gate_proj.weight"] = t["w1"][i]
        sd[p + "mlp.down_proj.weight"] = t["w2"][i]
        sd[p + "mlp.up_proj.weight"] = t["w3"][i]
    sd["lm_head.weight"] = t["token_embedding"] if h.shared_classifier else t["wcls"]
    return {k: v.contiguous() for k, v in sd.items()}


def hf_config(h: Llama2cHeader) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=h.vocab_size,
        hidden_size=h.dim,
        intermediate_size=h.hidden_dim,
        num_hidden_layers=h.n_layers,
        num_attention_heads=h.n_heads,
        num_key_value_heads=h.n_kv_heads,
        max_position_embeddings=h.seq_len,
        rms_norm_eps=RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=h.shared_classifier,
        bos_token_id=SPECIAL_PIECES.index(BOS),
        eos_token_id=SPECIAL_PIECES.index(EOS),
        pad_token_id=SPECIAL_PIECES.index(UNK),
        dtype="float32",
    )


def read_vocab(path: str | Path) -> list[tuple[str, float]]:
    """(piece, score) per token id from a llama2.c `tok*.bin`, in sentencepiece spelling ("▁", "<s>")."""
    path = Path(path)
    data = path.read_bytes()
    offset, pieces = 4, []  # skips int32 max_token_length: only llama2.c's C buffers need it
    while offset < len(data):
        if offset + 8 > len(data):
            raise Llama2cFormatError(f"{path}: byte {offset}: truncated entry for token {len(pieces)}")
        score, n = struct.unpack_from("<fi", data, offset)
        raw = data[offset + 8 : offset + 8 + n]
        if n < 0 or len(raw) != n:
            raise Llama2cFormatError(f"{path}: byte {offset}: token {len(pieces)} claims {n} bytes")
        try:
            piece = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Llama2cFormatError(f"{path}: byte {offset}: token {len(pieces)} is not UTF-8 ({e})") from None
        pieces.append((piece.replace(" ", SPACE), score))
        offset += 8 + n
    if len(pieces) < len(SPECIAL_PIECES) + N_BYTE_PIECES:
        raise Llama2cFormatError(f"{path}: {len(pieces)} tokens; a llama2.c vocabulary has at least 259")
    # llama2.c's export writes BOS/EOS as "\n<s>\n" and "\n</s>\n" for its C decoder.
    for i, name in enumerate(SPECIAL_PIECES):
        pieces[i] = (name, pieces[i][1])
    return pieces


def build_tokenizer(pieces: list[tuple[str, float]]) -> PreTrainedTokenizerFast:
    """A sentencepiece-style BPE that encodes like llama2.c's `encode`: a dummy "▁" prefix, whole
    pieces per character with `<0xXX>` byte fallback, then repeatedly the best-scoring merge.
    BPE merge ranks are the merged piece's score order, which is the same greedy choice."""
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    if len(vocab) != len(pieces):
        raise Llama2cFormatError("the vocabulary lists the same piece twice")
    reserved = {p for p, _ in pieces[: len(SPECIAL_PIECES) + N_BYTE_PIECES]}
    scores = {p: s for p, s in pieces if p not in reserved}
    merges = generate_merges(vocab, scores, skip_tokens=reserved)

    backend = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=UNK, fuse_unk=True, byte_fallback=True))
    # split=False: llama2.c merges across the whole text, not per word. prepend "first": the dummy
    # prefix goes before the text, not after each special token inside a chat template.
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=False)
    backend.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    # BOS on every plain encode: the model saw it before every story. Chat templates write their own.
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        # pad != eos, so collators that mask padding in the labels never mask a real end of answer.
        pad_token=UNK,
        add_bos_token=True,
        add_eos_token=False,
        chat_template=CHAT_TEMPLATE,
    )


def convert_llama2c(
    checkpoint_path: str | Path, tokenizer_path: str | Path, out_dir: str | Path, *, overwrite: bool = False
) -> Path:
    """Write `out_dir` as a transformers model directory (config.json, model.safetensors,
    generation_config.json, tokenizer files). It is built in a temporary sibling and renamed into
    place, so `out_dir` is either absent or complete. Returns `out_dir`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True to replace it")
    header, tensors = read_checkpoint(checkpoint_path)
    pieces = read_vocab(tokenizer_path)
    if len(pieces) != header.vocab_size:
        raise Llama2cFormatError(
            f"{tokenizer_path}: {len(pieces)} tokens, but {checkpoint_path} has vocab_size={header.vocab_size}"
        )
    tokenizer = build_tokenizer(pieces)
    tokenizer.model_max_length = header.seq_len

    config = hf_config(header)
    model = LlamaForCausalLM(config)
    model.load_state_dict(to_hf_state_dict(header, tensors), strict=True)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        # llama2.c's `run` also stops at BOS: its pretraining data separates stories by BOS alone.
        eos_token_id=[config.eos_token_id, config.bos_token_id],
        pad_token_id=config.pad_token_id,
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # llama2.c and its checkpoints are MIT-licensed; `tunesmith train` needs to find a licence.
        (tmp / "README.md").write_text(
            "---\nlicense: mit\n---\n# Converted from a llama2.c checkpoint (MIT) by tunesmith\n", encoding="utf-8"
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
