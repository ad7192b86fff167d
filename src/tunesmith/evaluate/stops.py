"""Which tokens end a generated answer. Shared by batched evaluation, the judge and `serve`.

A model stops talking only if generation stops on the token its chat template writes after an
answer. That is not always EOS: Llama 3 ends turns with `<|eot_id|>`, Phi-3 with `<|end|>` while its
EOS is `<|endoftext|>`, Gemma with `<end_of_turn>`. Missing one is the "never stops talking" symptom.
"""

from __future__ import annotations

from typing import Any

from tunesmith.data.template import _PROBE, _Specials, label, render, tokenize


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Every token that ends an answer: the generation config's eos_token_id (an int or a list),
    the tokenizer's EOS, and the end-of-turn token the chat template writes after an answer (found by
    rendering a probe conversation, so any template works, not only the ones we know by name)."""
    ids: set[int] = set()
    configured = getattr(generation_config, "eos_token_id", None)
    if configured is not None:
        ids.update([configured] if isinstance(configured, int) else configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    try:
        rendered = render(_PROBE, tokenizer)
        batch = tokenize(tokenizer, [rendered.text])
        encoded = label(rendered, batch["input_ids"][0], batch["offset_mapping"][0], _Specials.of(tokenizer))
        ids.update(t for t in encoded.terminators if t is not None)
    except Exception:  # noqa: BLE001 - a template that cannot render the probe still has its EOS
        pass
    return sorted(ids)
