"""What licence a model comes under, from its small files, and whether it allows use freely.

Read in order: the model card's YAML header (`license:` / `license_name:`), a LICENSE file, the
config (`license`), and last the model's name for families whose terms are well known. Classes:
- permissive: Apache-2.0, MIT, BSD, CC-BY, … (use, modify, ship, commercially);
- restricted: terms that limit who may use it or for what: Llama community licences (the
  700M-monthly-active-user clause and an acceptable-use policy), Gemma terms (prohibited uses, passed
  on to derivatives), Qwen's Tongyi Qianwen licence (100M MAU), research-only or non-commercial
  (CC-BY-NC, …), OpenRAIL (use restrictions);
- unknown: nothing found, or a licence not in these lists: read it before training.
`tunesmith train` refuses restricted or unknown licences until `model.license_acknowledged: true`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

LicenseClass = Literal["permissive", "restricted", "unknown"]
PERMISSIVE, RESTRICTED, UNKNOWN = "permissive", "restricted", "unknown"
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "LICENCE.txt", "license.txt")
CARD_FILE = "README.md"

_PERMISSIVE_IDS = re.compile(
    r"^(apache-2\.0|apache2|mit|bsd(-[0-9a-z.-]+)?|cc-by-(4\.0|3\.0|2\.0)|cc0-1\.0|unlicense|isc|zlib|bsl-1\.0|"
    r"openmdw-1\.0|mpl-2\.0|afl-3\.0|cdla-permissive-2\.0|upl-1\.0|wtfpl|artistic-2\.0|ecl-2\.0|postgresql)$"
)
_RESTRICTED_IDS = re.compile(
    r"^(llama[0-9.]*|llama-?[0-9.]+.*|gemma.*|cc-by-nc.*|cc-by-nd.*|cc-by-sa-nc.*|.*openrail.*|.*research.*|"
    r".*non-?commercial.*|qwen.*|tongyi-qianwen.*|deepseek.*|falcon-llm.*|apple-.*|nvidia-.*|gpl.*|agpl.*|lgpl.*)$"
)
# Phrases in a LICENSE file (first few kB), most specific first.
_TEXT_RULES: tuple[tuple[str, str], ...] = (
    (r"llama\s*[0-9.]*\s*community license", "llama"),
    (r"gemma terms of use", "gemma"),
    (r"tongyi qianwen", "tongyi-qianwen"),
    (r"non-?commercial", "non-commercial"),
    (r"research (use )?only|for research purposes only", "research-only"),
    (r"apache license[\s,]*version 2\.0", "apache-2.0"),
    (r"permission is hereby granted, free of charge", "mit"),
    (r"redistribution and use in source and binary forms", "bsd"),
    (r"creative commons attribution 4\.0", "cc-by-4.0"),
)
# Families whose licence is known from the name alone (a fallback; the card wins when present).
_NAME_RULES: tuple[tuple[str, str], ...] = (
    (r"smollm", "apache-2.0"),
    (r"(meta-)?llama-?[234]", "llama"),
    (r"codellama|llama-2", "llama"),
    (r"gemma", "gemma"),
    (r"mistral-7b|mixtral|ministral-8b-base|mistral-nemo", "apache-2.0"),
    (r"phi-?(2|3|3\.5|4)", "mit"),
    (r"qwen2\.5-(0\.5|1\.5|7|14|32)b|qwen3-|qwen2-(0\.5|1\.5|7|57)b", "apache-2.0"),
    (r"qwen2\.5-(3|72)b", "qwen"),
    (r"olmo", "apache-2.0"),
    (r"gpt2|pythia|tinyllama", "apache-2.0"),
)


@dataclass(frozen=True)
class LicenseInfo:
    id: str | None  # SPDX-like id as found ("apache-2.0", "llama3.1", ...), None when nothing was found
    cls: LicenseClass
    source: str  # where it was read: "README.md", "LICENSE", "config.json", "name", "none"
    why: str  # one sentence: what the class means for this model

    def to_json(self) -> dict[str, str | None]:
        return {"id": self.id, "class": self.cls, "source": self.source, "why": self.why}


def classify(license_id: str | None) -> LicenseClass:
    if not license_id:
        return UNKNOWN
    key = license_id.strip().lower()
    if _PERMISSIVE_IDS.match(key) or key in {"mit", "bsd"}:
        return PERMISSIVE
    if _RESTRICTED_IDS.match(key) or key in {"research-only", "non-commercial"}:
        return RESTRICTED
    return UNKNOWN


def _why(license_id: str | None, cls: LicenseClass) -> str:
    if cls == PERMISSIVE:
        return f"{license_id}: permissive (use, modify and ship, commercially too; keep the notice)"
    if cls == RESTRICTED:
        key = (license_id or "").lower()
        if key.startswith("llama"):
            return f"{license_id}: Llama community licence: above 700M monthly active users you need Meta's permission; acceptable-use policy applies and is passed on"
        if key.startswith("gemma"):
            return f"{license_id}: Gemma terms: prohibited-use policy that binds derivatives too"
        if "nc" in key.split("-") or "commercial" in key:
            return f"{license_id}: non-commercial: no commercial use of the model or its fine-tunes"
        return f"{license_id}: restricted terms (user caps, use policies, research-only or copyleft): read them before shipping"
    if license_id:
        return f"{license_id}: a licence tunesmith does not classify: read it before training"
    return "no licence found in the model card, a LICENSE file or the config: find out before training"


def _card_license(text: str) -> str | None:
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return None
    if not isinstance(meta, dict):
        return None
    value = meta.get("license")
    if isinstance(value, list):
        value = value[0] if value else None
    if value == "other" and isinstance(meta.get("license_name"), str):
        return meta["license_name"]
    return str(value) if value else None


def detect_license(model_dir: str | Path | None, name: str = "") -> LicenseInfo:
    """The licence of the model in `model_dir` (may be None for a hub id whose files are not local)."""
    directory = Path(model_dir) if model_dir else None
    found: tuple[str, str] | None = None
    if directory is not None and directory.is_dir():
        card = directory / CARD_FILE
        if card.is_file():
            lid = _card_license(card.read_text(encoding="utf-8", errors="replace"))
            if lid:
                found = (lid, CARD_FILE)
        if found is None:
            for fname in LICENSE_FILES:
                path = directory / fname
                if path.is_file():
                    head = path.read_text(encoding="utf-8", errors="replace")[:8000].lower()
                    for pattern, lid in _TEXT_RULES:
                        if re.search(pattern, head):
                            found = (lid, fname)
                            break
                    if found is None:
                        found = ("see " + fname, fname)
                    break
        config = directory / "config.json"
        if found is None and config.is_file():
            try:
                lid = json.loads(config.read_text(encoding="utf-8")).get("license")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                lid = None
            if isinstance(lid, str) and lid:
                found = (lid, "config.json")
    if found is None:
        base = Path(str(name)).name.lower() if name else ""
        for pattern, lid in _NAME_RULES:
            if base and re.search(pattern, base):
                found = (lid, "name")
                break
    if found is None:
        return LicenseInfo(None, UNKNOWN, "none", _why(None, UNKNOWN))
    lid, source = found
    cls = classify(lid)
    return LicenseInfo(lid, cls, source, _why(lid, cls))
