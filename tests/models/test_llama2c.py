"""The llama2.c converter against the real stories260K checkpoint: greedy text equal to llama2.c's
own `run`, token ids equal to llama2.c's own `encode`, and a reproducible model directory."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from tunesmith.models.llama2c import Llama2cFormatError, convert_llama2c, permute_for_rotate_half, read_checkpoint

EXPECTED_FILES = {
    "README.md",  # the MIT licence of llama2.c's checkpoints
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
}
ENGLISH = [
    "Once upon a time",
    "Lily's mom said, \"Lily, let's go to the park.\" She was sad.",
    "The quick brown fox jumps over the lazy dog.",
    "two  spaces\nand a newline\ttab, trailing space ",
    "12345 + 678 = 9,023!",
    "café naïve – ™ 日本 🙂",  # characters outside the 512 pieces: byte fallback
]


@pytest.fixture(scope="module")
def stories(shared_fixtures: Path) -> Path:
    folder = shared_fixtures / "models" / "stories260K"
    if not (folder / "stories260K.bin").is_file():
        pytest.skip(f"stories260K not found at {folder}")
    return folder


@pytest.fixture(scope="module")
def converted(stories: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_llama2c(stories / "stories260K.bin", stories / "tok512.bin", tmp_path_factory.mktemp("s") / "model")


@pytest.fixture
def one_thread() -> Iterator[None]:
    # A 64-wide model gains nothing from a second thread, and on a shared 2-core machine OpenMP's
    # spinning threads made 60 greedy steps take 15 s instead of 0.3 s.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def llama2c_greedy_text(stories: Path) -> str:
    """The `run ... -t 0.0` output quoted in the fixture's stories260K.md."""
    md = (stories / "stories260K.md").read_text()
    after_command = md.split("-t 0.0\n", 1)[1]
    return after_command.split("```", 1)[0].strip()


def llama2c_encode(text: str, tok_bin: Path) -> list[int]:
    """llama2.c's `encode` (run.c) in Python, reading tok512.bin itself: dummy " " prefix, one
    piece per character or its UTF-8 bytes + 3, then the best-scoring adjacent merge until none."""
    data, offset, pieces, scores = tok_bin.read_bytes(), 4, [], []
    while offset < len(data):
        score, n = struct.unpack_from("<fi", data, offset)
        pieces.append(data[offset + 8 : offset + 8 + n].decode())
        scores.append(score)
        offset += 8 + n
    lookup = {p: i for i, p in enumerate(pieces)}
    ids = [lookup[" "]] if text else []
    for ch in text:
        ids.extend([lookup[ch]] if ch in lookup else [b + 3 for b in ch.encode()])
    while True:
        merged = [lookup.get(pieces[a] + pieces[b]) for a, b in zip(ids, ids[1:])]
        candidates = [(scores[j], -i, j) for i, j in enumerate(merged) if j is not None]
        if not candidates:
            return ids
        _, neg_i, j = max(candidates)  # ties go to the leftmost pair, as in run.c
        ids[-neg_i : -neg_i + 2] = [j]


def test_greedy_decoding_reproduces_llama2c_run(converted: Path, stories: Path, one_thread: None) -> None:
    model = AutoModelForCausalLM.from_pretrained(converted)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    out = model.generate(torch.tensor([[tokenizer.bos_token_id]]), max_new_tokens=60, do_sample=False)
    text = tokenizer.decode(out[0], skip_special_tokens=True)

    assert len(out[0]) == 61, "generation stopped early"
    assert len(text) > 150
    assert llama2c_greedy_text(stories).startswith(text), text
    # The model's own token choices are the tokenizer's encoding of that text.
    assert tokenizer(text).input_ids == out[0].tolist()


def test_permutation_turns_interleaved_rope_into_rotate_half() -> None:
    n_heads, head_size, dim, pos = 4, 8, 16, 5
    w, x = torch.randn(n_heads * head_size, dim), torch.randn(dim)
    freqs = 1.0 / 10000.0 ** (torch.arange(0, head_size, 2).float() / head_size)
    angles = pos * freqs  # (head_size/2,)

    # llama2.c: consecutive pairs of each head are complex numbers rotated by pos * freq.
    q = (w @ x).view(n_heads, head_size // 2, 2)
    rotated = torch.view_as_real(torch.view_as_complex(q.contiguous()) * torch.polar(torch.ones_like(angles), angles))
    llama2c = rotated.reshape(-1)

    # transformers: rotate_half on the permuted projection.
    q_hf = (permute_for_rotate_half(w, n_heads) @ x).view(1, n_heads, 1, head_size)
    cos = torch.cat([angles, angles]).cos().view(1, 1, head_size)
    sin = torch.cat([angles, angles]).sin().view(1, 1, head_size)
    hf, _ = apply_rotary_pos_emb(q_hf, q_hf, cos, sin)

    # Same rotated vector, its rows in the permuted order.
    assert torch.allclose(hf.reshape(-1), permute_for_rotate_half(llama2c.unsqueeze(1), n_heads).squeeze(1), atol=1e-5)
    assert not torch.allclose(hf.reshape(-1), llama2c, atol=1e-3)  # the permutation is not a no-op


@pytest.mark.parametrize("text", ENGLISH)
def test_tokenizer_encodes_like_llama2c_and_round_trips(converted: Path, stories: Path, text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(converted)
    ids = tokenizer(text).input_ids

    assert ids[0] == tokenizer.bos_token_id == 1
    assert ids[1:] == llama2c_encode(text, stories / "tok512.bin")
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_model_directory_is_complete_and_deterministic(stories: Path, converted: Path, tmp_path: Path) -> None:
    again = convert_llama2c(stories / "stories260K.bin", stories / "tok512.bin", tmp_path / "again")

    assert {p.name for p in converted.iterdir()} == EXPECTED_FILES
    for name in EXPECTED_FILES:
        assert (converted / name).read_bytes() == (again / name).read_bytes(), name
    assert not [p for p in tmp_path.iterdir() if p.name != "again"], "temporary directory left behind"

    model = AutoModelForCausalLM.from_pretrained(converted)
    c = model.config
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (64, 172, 5)
    assert (c.num_attention_heads, c.num_key_value_heads, c.vocab_size, c.max_position_embeddings) == (8, 4, 512, 512)
    assert c.rope_parameters["rope_theta"] == 10000.0 and c.rms_norm_eps == 1e-5
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    # The embedding is the file's, not a fresh initialisation.
    _, tensors = read_checkpoint(stories / "stories260K.bin")
    assert torch.equal(model.model.embed_tokens.weight, tensors["token_embedding"])


def test_chat_template_masks_exactly_the_answer_and_eos(converted: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(converted)
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<s>System: Be kind.\nUser: Hi there\nAssistant: Hello!</s>"
    )
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("\nAssistant:")

    enc = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    answer = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tokenizer.decode(answer) == "Hello!</s>"
    assert tokenizer.convert_ids_to_tokens(answer[0]).startswith("▁")  # the space is trained, in the answer
    assert answer[-1] == tokenizer.eos_token_id
    assert enc["input_ids"].count(tokenizer.bos_token_id) == 1  # the template's BOS, no second one


def test_truncated_checkpoint_is_refused_by_name(stories: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.bin"
    cut.write_bytes((stories / "stories260K.bin").read_bytes()[:-4])
    with pytest.raises(Llama2cFormatError, match=r"cut\.bin: 1056536 bytes, but header"):
        convert_llama2c(cut, stories / "tok512.bin", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_a_non_empty_directory(stories: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        convert_llama2c(stories / "stories260K.bin", stories / "tok512.bin", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
