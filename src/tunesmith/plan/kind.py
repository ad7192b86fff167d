"""Base or instruct: is there a chat format to build on?

Signals, strongest first: the name (…-Instruct, -Chat, -it, SFT/DPO/RLHF, or …-Base), then a chat
template in the tokenizer files, then the config (an end-of-turn token among the EOS ids). Some base
models ship a chat template (Qwen2.5's base models do), so the name wins over the template.
Advice, per the guide: start from an instruct model in most cases; a base model has no chat format
to build on, so it needs more examples, a template you choose, and every answer to end with EOS.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["base", "instruct"]
_INSTRUCT_NAME = re.compile(r"(instruct|[-_.]chat|[-_]it\b|[-_]it[-_]|sft|dpo|rlhf|orpo|assistant|hermes|zephyr)", re.I)
_BASE_NAME = re.compile(r"([-_]base\b|[-_]base[-_]|[-_]pt\b|pretrain)", re.I)
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>[INST]")


@dataclass(frozen=True)
class KindInfo:
    kind: Kind
    evidence: list[str]
    advice: str


def chat_template_of(model_dir: Path) -> str | None:
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text(encoding="utf-8", errors="replace")
    for name, key in (("chat_template.json", "chat_template"), ("tokenizer_config.json", "chat_template")):
        path = model_dir / name
        if path.is_file():
            try:
                value = json.loads(path.read_text(encoding="utf-8")).get(key)
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                continue
            if isinstance(value, list):  # named templates: [{"name": "default", "template": ...}]
                value = next((t.get("template") for t in value if isinstance(t, dict)), None)
            if isinstance(value, str) and value:
                return value
    return None


def detect_kind(model_dir: str | Path | None, name: str) -> KindInfo:
    evidence: list[str] = []
    base_name = Path(str(name)).name
    directory = Path(model_dir) if model_dir else None
    template = chat_template_of(directory) if directory and directory.is_dir() else None
    if _INSTRUCT_NAME.search(base_name):
        kind: Kind = "instruct"
        evidence.append(f"the name {base_name!r} says instruct/chat")
    elif _BASE_NAME.search(base_name):
        kind = "base"
        evidence.append(f"the name {base_name!r} says base")
    elif template:
        kind = "instruct"
        evidence.append("the tokenizer has a chat template")
    else:
        kind = "base"
        evidence.append("no chat template and nothing in the name says instruct")
    if template and kind == "base":
        evidence.append("it ships a chat template anyway (some base models do; their weights never trained on it)")
    if template and any(t in template for t in _END_OF_TURN):
        evidence.append("the template ends turns with a dedicated token")
    if kind == "instruct":
        advice = "instruct model: a good start, fine-tuning builds on its chat format; keep its template"
    else:
        advice = (
            "base model: no chat format to build on. Start from the instruct variant unless you need "
            "the raw model (continued pre-training, a format of your own); then give a template "
            "(model.chat_template), expect to need more examples, and make sure every answer ends with EOS"
        )
    return KindInfo(kind, evidence, advice)
