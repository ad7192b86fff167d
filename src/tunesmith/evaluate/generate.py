"""Batched generation: the answers a model gives to held-out prompts.

Reused by `eval RUN_DIR`, the judge, `serve` and `compare`, so the entry point is one plain call:

    results = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=128))

Why it is built the way it is:
- Prompts are rendered with the model's *own* chat template and `add_generation_prompt=True`,
  exactly as training rendered them (tokenized with `add_special_tokens=False`: the template writes
  BOS itself), so the model sees at inference what it learned on.
- Batches are left-padded (a decoder continues from the last position of each row) and the KV cache
  is on; prompts are sorted by length first so a batch holds rows of similar length: less padding,
  and a short prompt does not pay for a long one's positions. Results come back in input order.
  A prefix every prompt of a batch shares (a system prompt) is computed once (`MIN_SHARED_PREFIX`).
- Generation stops on *every* token that ends an answer (`stop_token_ids`): EOS alone misses
  `<|eot_id|>`, `<|end|>`, `<|im_end|>`. An answer that reaches `max_new_tokens` without one is
  "unstopped"; `unstopped_finding` turns a count of them into advice.
- Greedy by default (`temperature: 0`): evaluation must be repeatable.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunesmith.config import GenerationConfig
from tunesmith.evaluate.stops import stop_token_ids

Prompt = str | list[dict[str, Any]]  # plain text (used as the user turn) or OpenAI messages


@dataclass
class Generation:
    """One answer. `stopped`: it ended on a stop token (False: cut at max_new_tokens)."""

    text: str
    stopped: bool
    new_tokens: int  # generated tokens, the stop token included
    token_ids: list[int] = field(default_factory=list, repr=False)  # the answer's tokens, stop token excluded


def prompt_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation up to (not including) its last assistant turn: what the model must answer.
    A conversation without an assistant turn is a prompt as it is."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    return list(messages if last is None else messages[:last])


def reference_answer(messages: list[dict[str, Any]]) -> str | None:
    """The content of the last assistant turn (the answer the prompt should get), if any."""
    for m in reversed(messages):
        if m.get("role") == "assistant":
            return m.get("content") if isinstance(m.get("content"), str) else None
    return None


def as_messages(prompt: Prompt) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def render_prompt(prompt: Prompt, tokenizer: Any) -> str:
    """The prompt as the model's chat template writes it, ending where the answer begins."""
    from tunesmith.data.template import DEFAULT_CHAT_TEMPLATE

    template = None if tokenizer.chat_template else DEFAULT_CHAT_TEMPLATE
    return tokenizer.apply_chat_template(
        as_messages(prompt), chat_template=template, add_generation_prompt=True, tokenize=False
    )


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    config: GenerationConfig | None = None,
    *,
    stop_ids: Sequence[int] | None = None,
    progress: bool = True,
    description: str = "generating",
) -> list[Generation]:
    """Answer every prompt (text or messages; a conversation ending in an assistant turn is cut
    before it with `prompt_messages` by the caller). Returns one Generation per prompt, in order."""
    config = config or GenerationConfig()
    stops = list(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer, model.generation_config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
    texts = [render_prompt(p, tokenizer) for p in prompts]
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]), reverse=True)  # longest first: OOM early
    device = next(model.parameters()).device
    sampling = config.temperature > 0
    kwargs: dict[str, Any] = dict(
        max_new_tokens=config.max_new_tokens,
        do_sample=sampling,
        eos_token_id=stops or None,
        pad_token_id=pad_id,
        use_cache=True,
    )
    if sampling:
        kwargs.update(temperature=config.temperature, top_p=config.top_p)
    else:  # the model's generation_config may carry sampling defaults; greedy ignores them, say so
        kwargs.update(temperature=None, top_p=None, top_k=None)
    results: list[Generation | None] = [None] * len(texts)
    was_training = model.training
    model.eval()
    try:
        with _progress_bar(len(texts), description, progress) as advance, torch.inference_mode():
            for start in range(0, len(order), config.batch_size):
                rows = order[start : start + config.batch_size]
                batch = [encoded[i] for i in rows]
                prefix = _shared_prefix(batch) if len(batch) > 1 and _prefix_cache_ok(model) else 0
                if prefix >= MIN_SHARED_PREFIX:
                    input_ids, attention = _pad_after_prefix(batch, prefix, pad_id)
                    cache = _prefill(model, batch[0][:prefix], len(batch), device)
                    out = model.generate(
                        input_ids=input_ids.to(device), attention_mask=attention.to(device), cache=cache, **kwargs
                    )
                else:
                    input_ids, attention = _left_pad(batch, pad_id)
                    out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
                new = out[:, input_ids.shape[1] :].tolist()
                for i, tokens in zip(rows, new, strict=True):
                    results[i] = _result(tokens, stops, tokenizer)
                advance(len(rows))
    finally:
        model.train(was_training)
    return [r for r in results if r is not None]


# Prompts of a batch that start with the same tokens (the same system prompt: the text-to-SQL
# example's schema is 170 of its ~190 prompt tokens) share one prefill of that prefix, copied into
# every row's KV cache; only the rest is computed per row, with the padding placed between the
# prefix and each row's own tokens (positions come from the attention mask, so they stay right).
# Same greedy tokens as one-at-a-time generation (tests and bench/generate.py check it); below 16
# shared tokens the saving is not worth the extra forward call.
MIN_SHARED_PREFIX = 16


def _shared_prefix(rows: list[list[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own."""
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n


def _prefix_cache_ok(model: Any) -> bool:
    """A model whose cache can be copied per row and that attends over the whole context (a
    sliding window would drop prefix positions differently per row)."""
    config = getattr(model, "config", None)
    sliding = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    return not sliding and not getattr(config, "is_encoder_decoder", False)


def _prefill(model: Any, prefix: list[int], batch: int, device: Any) -> Any:
    out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    cache.batch_repeat_interleave(batch)
    return cache


def _pad_after_prefix(rows: list[list[int]], prefix: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows) - prefix
    ids = torch.full((len(rows), prefix + width), pad_id, dtype=torch.long)
    mask = torch.ones((len(rows), prefix + width), dtype=torch.long)
    for k, r in enumerate(rows):
        own = len(r) - prefix
        ids[k, :prefix] = torch.tensor(r[:prefix])
        ids[k, prefix + width - own :] = torch.tensor(r[prefix:])
        mask[k, prefix : prefix + width - own] = 0
    return ids, mask


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        if r:
            ids[k, width - len(r) :] = torch.tensor(r)
            mask[k, width - len(r) :] = 1
    return ids, mask


def _result(tokens: list[int], stops: Sequence[int], tokenizer: Any) -> Generation:
    """Cut a generated row at its first stop token. What follows it is padding (a finished row
    keeps emitting pad while the rest of the batch goes on), never part of the answer."""
    stop_set = set(stops)
    end = next((k for k, t in enumerate(tokens) if t in stop_set), None)
    answer = tokens if end is None else tokens[:end]
    text = tokenizer.decode(answer, skip_special_tokens=True)
    return Generation(
        text=text.strip(), stopped=end is not None, new_tokens=len(tokens) if end is None else end + 1, token_ids=answer
    )


class _progress_bar:  # noqa: N801 - used as a context manager like a function
    """A rich progress bar over prompts (silent when `show` is False or nothing to do)."""

    def __init__(self, total: int, description: str, show: bool):
        self.total, self.description, self.show = total, description, show and total > 0
        self._bar: Any = None

    def __enter__(self):
        if not self.show:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        )
        self._bar.start()
        task = self._bar.add_task(self.description, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()


def unstopped_finding(results: Sequence[Generation], max_new_tokens: int, *, model: str = "model") -> dict | None:
    """A finding when answers hit `max_new_tokens` without a stop token: the "never stops
    talking" symptom, with what usually causes it. None when every answer stopped."""
    unstopped = sum(not r.stopped for r in results)
    if not unstopped:
        return None
    return {
        "code": "unstopped_outputs",
        "model": model,
        "count": unstopped,
        "n": len(results),
        "message": f"{model}: {unstopped} of {len(results)} answers reached max_new_tokens={max_new_tokens} "
        "without a stop token",
        "advice": "If the answers are complete but run on, the model never learned to emit its end-of-turn "
        "token: check `tunesmith data check` for no_end_of_turn / stop_token_mismatch, train longer, or keep "
        "lora.train_stop_tokens on. If they are simply long, raise eval.generation.max_new_tokens.",
    }


# ---- loading the models to evaluate ----------------------------------------------------------------


def load_for_generation(
    path: str | Path,
    *,
    base: str | Path | None = None,
    dtype: str = "auto",
    chat_template: str | None = None,
    trust_remote_code: bool = False,
    device: str = "auto",
) -> tuple[Any, Any]:
    """(model, tokenizer) ready for `generate`, from a model directory or a LoRA adapter directory
    (adapter_config.json). An adapter loads onto `base` (default: the base its config names) and
    is merged into it: same outputs, no adapter overhead per token. `device="auto"`: the GPU when
    there is one, else the CPU."""
    from tunesmith.data.template import load_tokenizer
    from tunesmith.models.load import load_model

    path = Path(path)
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        import json

        from peft import PeftModel

        base = base or json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{adapter_config}: names no base model; pass the base model explicitly")
        model = load_model(base, dtype=dtype, trust_remote_code=trust_remote_code)  # type: ignore[arg-type]
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        # The adapter directory holds the tokenizer (and template) the run trained with.
        tokenizer = load_tokenizer(path, chat_template=chat_template, trust_remote_code=trust_remote_code)
    else:
        model = load_model(path if path.is_dir() else str(path), dtype=dtype, trust_remote_code=trust_remote_code)  # type: ignore[arg-type]
        tokenizer = load_tokenizer(path, chat_template=chat_template, trust_remote_code=trust_remote_code)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    return model, tokenizer


def load_tuned(run_dir: str | Path, config: Any) -> tuple[Any, Any]:
    """The run's result, `RUN_DIR/final` (an adapter or a full model, see train/checkpoint.py::export_final),
    on the run config's base model."""
    from tunesmith.runs import FINAL_DIR

    final = Path(run_dir) / FINAL_DIR
    if not final.is_dir():
        raise FileNotFoundError(
            f"{final}: no tuned model in this run (training exports its best checkpoint there when it ends); "
            f"finish the run with `tunesmith train` first"
        )
    m = config.model
    return load_for_generation(final, base=m.name_or_path, dtype=m.dtype, trust_remote_code=m.trust_remote_code)


def load_base(config: Any) -> tuple[Any, Any]:
    """The run config's base model, with the chat template the run trained with."""
    m = config.model
    return load_for_generation(
        m.name_or_path, dtype=m.dtype, chat_template=m.chat_template, trust_remote_code=m.trust_remote_code
    )


# ---- vLLM (GPU only; optional) ------------------------------------------------------------------------


def vllm_usable() -> bool:
    """vLLM is installed and a CUDA GPU is present (it needs both)."""
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def generate_vllm(
    model_dir: str | Path,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    config: GenerationConfig | None = None,
    *,
    adapter_dir: str | Path | None = None,
    stop_ids: Sequence[int] | None = None,
) -> list[Generation]:
    """`generate` on vLLM: same prompts (rendered by the same template), same stop tokens, the LoRA
    adapter through vLLM's LoRARequest. Untested on CPU machines: it needs a GPU and vLLM."""
    from vllm import LLM, SamplingParams  # guarded by vllm_usable()
    from vllm.lora.request import LoRARequest

    config = config or GenerationConfig()
    stops = list(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer)
    llm = LLM(model=str(model_dir), enable_lora=adapter_dir is not None, trust_remote_code=False)
    params = SamplingParams(
        max_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p if config.temperature > 0 else 1.0,
        stop_token_ids=stops,
        skip_special_tokens=True,
    )
    lora = LoRARequest("tuned", 1, str(adapter_dir)) if adapter_dir is not None else None
    texts = [render_prompt(p, tokenizer) for p in prompts]
    outputs = llm.generate(
        [{"prompt_token_ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts],
        params,
        lora_request=lora,
    )
    results = []
    for out in outputs:
        choice = out.outputs[0]
        results.append(
            Generation(
                text=choice.text.strip(), stopped=choice.finish_reason == "stop", new_tokens=len(choice.token_ids)
            )
        )
    return results
