"""An OpenAI-compatible endpoint for a base model plus LoRA adapters chosen per request.

`tunesmith serve MODEL_OR_RUN_DIR --adapter NAME=PATH ...` loads the base model once and every
adapter beside it (peft multi-adapter: `load_adapter`, then `set_adapter` per request), and answers
`/v1/chat/completions` (streaming too, as server-sent events) and `/v1/models`. The request's
`model` picks the weights: `base` (or the base's own name) for the base model without adapters,
an adapter's name for that adapter. One model serves every adapter, so requests are answered one
at a time (a lock around generation); for throughput, use vLLM's server with its LoRA support.

Given a run directory, the base comes from the run's config and the run's `final/` adapter is
served under the run's name, with the tokenizer (and chat template) the run trained with.
It binds 127.0.0.1 unless told otherwise: there is no authentication.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations (Request) at runtime.
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import GenerationConfig
from tunesmith.evaluate.stops import stop_token_ids

BASE_NAME = "base"
ADAPTER_CONFIG_FILE = "adapter_config.json"  # peft's name; its presence marks an adapter directory
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class ServeError(ValueError):
    """The server cannot start as asked (a bad --adapter, a run directory without a model)."""


@dataclass
class Generated:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop": a stop token or stop string ended it; "length": max_new_tokens did


def _text_content(content: Any) -> str:
    """OpenAI content: a string, or a list of parts of which the text ones count."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "" if content is None else str(content)


def generate_chat(
    model: Any,
    tokenizer: Any,
    messages: list[dict[str, Any]],
    generation: GenerationConfig | None = None,
    *,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    stop: list[str] | None = None,
    streamer: Any = None,
) -> Generated:
    """One answer to `messages`, rendered with the tokenizer's chat template and its generation
    prompt, stopping on every stop token (`stop_token_ids`) and on `stop` strings. Greedy unless
    a temperature > 0 is given. Arguments left None come from `generation`."""
    import torch
    from transformers import GenerationConfig as HFGenerationConfig

    generation = generation or GenerationConfig()
    messages = [{**m, "content": _text_content(m.get("content"))} for m in messages]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # The template writes BOS itself (as in training, data/template.py): no special tokens added here.
    input_ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    input_ids = input_ids.to(next(model.parameters()).device)
    stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    temperature = generation.temperature if temperature is None else temperature
    sample = temperature > 0
    config = HFGenerationConfig(
        max_new_tokens=max_new_tokens or generation.max_new_tokens,
        do_sample=sample,
        temperature=temperature if sample else None,
        top_p=(generation.top_p if top_p is None else top_p) if sample else None,
        eos_token_id=stops or None,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops or [0])[0],
        stop_strings=stop or None,
    )
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=config,
            streamer=streamer,
            tokenizer=tokenizer if stop else None,
        )
    new = output[0, input_ids.shape[1] :].tolist()
    ended = bool(new) and new[-1] in stops
    answer = tokenizer.decode(new, skip_special_tokens=True)
    stopped_by_string = False
    for s in stop or ():
        if s in answer:
            answer, stopped_by_string = answer[: answer.index(s)], True
    finish = "stop" if ended or stopped_by_string or len(new) < config.max_new_tokens else "length"
    return Generated(answer, input_ids.shape[1], len(new), finish)


class ModelServer:
    """A base model and its adapters, answering chat requests one at a time."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        adapters: list[str] = (),
        aliases: list[str] = (),
        generation: GenerationConfig | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.adapters = list(adapters)
        self.aliases = [a for a in aliases if a and a != BASE_NAME and a not in self.adapters]
        self.generation = generation or GenerationConfig()
        self.lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model_or_run_dir: str | Path,
        adapters: dict[str, str | Path] | None = None,
        *,
        generation: GenerationConfig | None = None,
        dtype: str = "auto",
    ) -> "ModelServer":
        """Load a base model (hub id, directory, or run directory) and `adapters` (name -> directory)."""
        from peft import PeftModel

        from tunesmith.data.template import load_tokenizer
        from tunesmith.models.load import load_model

        base, tokenizer_source, chat_template, found, aliases = _resolve(model_or_run_dir)
        adapters = {**found, **(adapters or {})}
        for name, path in adapters.items():
            if name == BASE_NAME:
                raise ServeError(f"--adapter {name}=...: '{BASE_NAME}' names the base model; choose another name")
            if not (Path(path) / ADAPTER_CONFIG_FILE).is_file():
                raise ServeError(
                    f"--adapter {name}={path}: no {ADAPTER_CONFIG_FILE} there (not a peft adapter directory)"
                )
        model = load_model(base, dtype=dtype)
        tokenizer = load_tokenizer(tokenizer_source, chat_template=chat_template)
        names = list(adapters)
        if names:
            model = PeftModel.from_pretrained(model, str(adapters[names[0]]), adapter_name=names[0])
            for name in names[1:]:
                model.load_adapter(str(adapters[name]), adapter_name=name)
        model.eval()
        return cls(model, tokenizer, adapters=names, aliases=[str(base), *aliases], generation=generation)

    def model_names(self) -> list[str]:
        return [BASE_NAME, *self.aliases, *self.adapters]

    def _select(self, name: str) -> Any:
        """A context in which `self.model` computes as the model called `name` (hold the lock)."""
        import contextlib

        if name in self.adapters:
            self.model.set_adapter(name)
            return contextlib.nullcontext()
        if self.adapters:  # the base: the same weights with every adapter switched off
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def complete(self, name: str, messages: list[dict[str, Any]], *, streamer: Any = None, **options: Any) -> Generated:
        with self.lock, self._select(name):
            return generate_chat(self.model, self.tokenizer, messages, self.generation, streamer=streamer, **options)

    def stream(self, name: str, messages: list[dict[str, Any]], **options: Any) -> tuple[Iterator[str], Any]:
        """Text pieces as they are generated, and `finish()`: called once the pieces are exhausted,
        it returns the Generated result (or raises what generation raised). Generation runs in its
        own thread, under the lock."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = self.complete(name, messages, streamer=streamer, **options)
            except Exception as e:  # noqa: BLE001 - re-raised by finish(), in the reader's thread
                outcome["error"] = e
                streamer.end()  # unblock the reader: generate raised before ending the stream

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def finish() -> Generated:
            thread.join()  # the streamer ends inside generate, a moment before `result` is set
            if "error" in outcome:
                raise outcome["error"]
            return outcome["result"]

        return iter(streamer), finish


def _resolve(model_or_run_dir: str | Path) -> tuple[str, str, str | None, dict[str, Path], list[str]]:
    """(base model, tokenizer source, chat template override, adapters found, other names of the
    base) for a model or a run directory."""
    from tunesmith.config import load_config
    from tunesmith.runs import CONFIG_FILE, FINAL_DIR

    path = Path(model_or_run_dir)
    if not (path / CONFIG_FILE).is_file():
        return str(model_or_run_dir), str(model_or_run_dir), None, {}, []
    config = load_config(path / CONFIG_FILE)
    final = path / FINAL_DIR
    if not final.is_dir():
        raise ServeError(f"{path}: a run directory without {FINAL_DIR}/ (has training finished?)")
    if (final / ADAPTER_CONFIG_FILE).is_file():
        return config.model.name_or_path, str(final), config.model.chat_template, {config.name: final}, []
    # A full fine-tune: final/ is the model itself, served as the base and under the run's name.
    return str(final), str(final), config.model.chat_template, {}, [config.name]


# --- HTTP ----------------------------------------------------------------------------------------------


def create_app(server: ModelServer) -> Any:
    """The FastAPI app: `GET /v1/models`, `POST /v1/chat/completions` (with `stream: true` as SSE)."""
    import json

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="tunesmith serve")

    def error(status: int, message: str, code: str | None = None) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}},
            status_code=status,
        )

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": "tunesmith"} for n in server.model_names()],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the request body is not JSON")
        name, messages = body.get("model"), body.get("messages")
        if name not in server.model_names():
            return error(404, f"model {name!r} not found; served: {', '.join(server.model_names())}", "model_not_found")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return error(400, "messages must be a non-empty list of {role, content} objects")
        if body.get("n", 1) != 1:
            return error(400, "n > 1 is not supported")
        stop = body.get("stop")
        options = {
            "max_new_tokens": body.get("max_completion_tokens") or body.get("max_tokens"),
            "temperature": body.get("temperature"),
            "top_p": body.get("top_p"),
            "stop": [stop] if isinstance(stop, str) else stop,
        }
        name = BASE_NAME if name in server.aliases else name
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not body.get("stream"):
            import anyio

            result = await anyio.to_thread.run_sync(lambda: server.complete(name, messages, **options))
            return {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result.text},
                        "finish_reason": result.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "total_tokens": result.prompt_tokens + result.completion_tokens,
                },
            }

        pieces, finish = server.stream(name, messages, **options)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
            payload = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            return f"data: {json.dumps(payload)}\n\n"

        def events() -> Iterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            for piece in pieces:
                if piece:
                    yield chunk({"content": piece})
            try:
                yield chunk({}, finish().finish_reason)
            except Exception as e:  # noqa: BLE001 - the status line is long gone: report it in the stream
                yield f"data: {json.dumps({'error': {'message': str(e)}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def serve(
    model_or_run_dir: str | Path,
    adapters: dict[str, str | Path] | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    generation: GenerationConfig | None = None,
    on_ready: Any = None,
) -> None:
    """Load the models and serve them until interrupted. `on_ready(server)` runs before listening."""
    import uvicorn

    server = ModelServer.load(model_or_run_dir, adapters, generation=generation)
    if on_ready is not None:
        on_ready(server)
    uvicorn.run(create_app(server), host=host, port=port, log_level="info")
