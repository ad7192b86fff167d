"""LoRA on a real pretrained model: stories260K (llama2.c, TinyStories) learns a chat format it
has never seen, and answers held-out questions in it, where the base model tells a story.

The task: "Tell me about <name> and the <object>." → "<name> has a <colour> <object>.", with the
colour fixed per object. Answering a held-out (name, object) pair needs all three skills at once:
copy the name, copy the object, recall the object's colour. Names are ones whose first piece in the
512-piece vocabulary carries the first letter ("▁Lily", "▁T"+"om"): names that start with a bare
"▁" piece ("▁"+"A"+"n"+"n"+"a") accounted for all 15 wrong answers out of 32 held-out ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import chat_row, read_jsonl, write_jsonl
from tunesmith.config import load_config
from tunesmith.runs import FINAL_DIR, METRICS_FILE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAMES = "Lily Tim Timmy Tom Ben Sam Sue Max Mia Bob Lucy Sara Mark Billy Molly Sally".split()
COLOUR_OF = {
    "ball": "red",
    "kite": "blue",
    "hat": "green",
    "car": "yellow",
    "cat": "black",
    "dog": "brown",
    "cake": "pink",
    "boat": "white",
    "box": "blue",
    "bird": "yellow",
    "cup": "green",
    "doll": "red",
}
OBJECTS = list(COLOUR_OF)
QUESTIONS = ["Tell me about {name} and the {thing}.", "What is the {thing} of {name} like?"]
MAX_NEW_TOKENS = 40
# Measured on one thread: 90 steps in ~8 s; held-out answers in the format after 5 epochs: 32/32 at
# lr 3e-3 and 1e-2 (whose validation curve jumps about), 18/32 at 1e-3.
RECIPE = [
    "model.dtype=float32",
    "train.method=lora",
    "lora.r=16",
    "lora.alpha=32",
    "lora.target_modules=all-linear",
    "train.lr=3e-3",
    "train.epochs=5",
    "train.effective_batch=16",
    "train.micro_batch=16",
    "train.eval_every=0.5",
    "train.early_stopping_patience=0",
    "train.report_to=[]",
    # Every question is one of two templates, one paraphrase group to an embedder; the held-out
    # pairs above are the real test. Split lexically (MinHash), without a test set.
    "split.embedder=none",
    "split.test=0",
]


def answer(name: str, thing: str) -> str:
    return f"{name} has a {COLOUR_OF[thing]} {thing}."


def held_out_pairs() -> list[tuple[str, str]]:
    """Two objects per name, spread so every name and every object also appears in training."""
    return [(name, OBJECTS[(2 * i + j) % len(OBJECTS)]) for i, name in enumerate(NAMES) for j in range(2)]


def write_chats(path: Path, pairs: list[tuple[str, str]]) -> Path:
    rows = [
        chat_row(question.format(name=name, thing=thing), answer(name, thing))
        for name, thing in pairs
        for question in QUESTIONS
    ]
    return write_jsonl(path, rows)


@dataclass
class Reply:
    expected: str
    new_ids: list[int]
    text: str

    @property
    def first_sentence(self) -> str:
        return self.text.split(".", 1)[0] + "."


@torch.no_grad()
def greedy_replies(model, tokenizer, prompts: list[tuple[str, str, str]]) -> list[Reply]:
    """One left-padded batch, greedy, stopping on the model's generation-config stop tokens."""
    chats = [[{"role": "user", "content": q}] for q, _, _ in prompts]
    tokenizer.padding_side = "left"
    enc = tokenizer.apply_chat_template(
        chats, add_generation_prompt=True, padding=True, return_dict=True, return_tensors="pt"
    )
    out = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    stops = set(model.generation_config.eos_token_id)  # the converter's: [EOS, BOS]
    replies = []
    for row, (_, name, thing) in zip(out[:, enc["input_ids"].shape[1] :].tolist(), prompts):
        # Rows that stopped early are padded after their stop token; cut there.
        row = row[: next((i + 1 for i, t in enumerate(row) if t in stops), len(row))]
        replies.append(Reply(answer(name, thing), row, tokenizer.decode(row, skip_special_tokens=True).strip()))
    return replies


@dataclass
class Outcome:
    base: list[Reply]
    tuned: list[Reply]
    val_losses: list[float]
    eos_id: int


@pytest.fixture(scope="module")
def outcome(shared_fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models.llama2c import convert_llama2c
    from tunesmith.train.recipe import train

    stories = shared_fixtures / "models" / "stories260K"
    if not (stories / "stories260K.bin").is_file():
        pytest.skip(f"stories260K not found at {stories}")
    root = tmp_path_factory.mktemp("stories")
    model_dir = convert_llama2c(stories / "stories260K.bin", stories / "tok512.bin", root / "model")
    held = held_out_pairs()
    seen = [(n, t) for n in NAMES for t in OBJECTS if (n, t) not in held]
    data = write_chats(root / "chats.jsonl", seen)  # 160 pairs × 2 questions = 320 rows

    config = load_config(
        overrides=[
            "name=stories-lora",
            f"runs_dir={root / 'runs'}",
            f"model.name_or_path={model_dir}",
            f"data.path={data}",
            *RECIPE,
        ]
    )
    result = train(config)
    assert result.final_dir == config.run_dir / FINAL_DIR and (result.final_dir / "adapter_config.json").is_file()
    rows = read_jsonl(config.run_dir / METRICS_FILE)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # Alternate the two phrasings over the held-out pairs: both are trained, neither pair is.
    prompts = [(QUESTIONS[i % 2].format(name=n, thing=t), n, t) for i, (n, t) in enumerate(held)]
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), result.final_dir).eval()
    return Outcome(
        greedy_replies(base, tokenizer, prompts),
        greedy_replies(tuned, tokenizer, prompts),
        [r["val_loss"] for r in rows if "val_loss" in r],
        tokenizer.eos_token_id,
    )


def rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags)


def stopped_at_eos(reply: Reply, eos_id: int) -> bool:
    return len(reply.new_ids) < MAX_NEW_TOKENS and reply.new_ids[-1:] == [eos_id]


def test_tuned_model_answers_held_out_questions_in_the_trained_format(outcome: Outcome) -> None:
    tuned = [r.first_sentence == r.expected for r in outcome.tuned]
    base = [r.first_sentence == r.expected for r in outcome.base]
    assert rate(tuned) >= 0.8, [r.text for r in outcome.tuned]
    assert rate(base) == 0, [r.text for r in outcome.base]  # the format is new to the base model


def test_base_model_rambles_to_max_new_tokens(outcome: Outcome) -> None:
    assert all(len(r.new_ids) == MAX_NEW_TOKENS and outcome.eos_id not in r.new_ids for r in outcome.base)
    # A story, not an answer: at least a sentence and a half of text.
    assert all(len(r.text) > 40 for r in outcome.base), [r.text for r in outcome.base]


def test_validation_loss_fell_from_the_first_evaluation_to_the_best(outcome: Outcome) -> None:
    first, best = outcome.val_losses[0], min(outcome.val_losses)
    assert len(outcome.val_losses) >= 4 and best < 0.8 * first, outcome.val_losses


def test_tuned_model_stops_at_eos(outcome: Outcome) -> None:
    stops = [stopped_at_eos(r, outcome.eos_id) and r.text == r.expected for r in outcome.tuned]
    assert rate(stops) >= 0.8, [r.text for r in outcome.tuned]
