"""`tunesmith serve MODEL_OR_RUN_DIR [--adapter NAME=PATH ...] [--port 8000] [--host 127.0.0.1]`."""

from __future__ import annotations

from typing import Annotated

import typer

from tunesmith.cli.errors import EXIT_UNREADABLE, err_console
from tunesmith.serve import BASE_NAME, DEFAULT_HOST, DEFAULT_PORT

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def parse_adapters(specs: list[str]) -> dict[str, str]:
    """`NAME=PATH` strings to a mapping; ValueError says which one is wrong."""
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--adapter {spec!r}: expected NAME=PATH, e.g. --adapter sql=runs/text2sql-smollm2/final")
        if name in adapters:
            raise ValueError(f"--adapter {name}: given twice")
        adapters[name] = path
    return adapters


def serve_command(
    model_or_run_dir: Annotated[str, typer.Argument(help="Base model (hub id or directory) or a run directory.")],
    adapter: Annotated[
        list[str] | None, typer.Option("--adapter", help="NAME=PATH of a LoRA adapter; requests pick it by model name.")
    ] = None,
    port: Annotated[int, typer.Option(help="TCP port.")] = DEFAULT_PORT,
    host: Annotated[
        str, typer.Option(help="Interface to bind; anything but 127.0.0.1 exposes an unauthenticated server.")
    ] = DEFAULT_HOST,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Default answer length when a request sets no max_tokens.")
    ] = None,
) -> None:
    """Serve a model and its LoRA adapters as an OpenAI-compatible API (/v1/chat/completions, /v1/models)."""
    from tunesmith.config import GenerationConfig
    from tunesmith.models.load import ModelLoadError
    from tunesmith.serve import ServeError, serve

    try:
        adapters = parse_adapters(adapter or [])
    except ValueError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(EXIT_UNREADABLE) from None
    if host not in LOOPBACK:
        err_console.print(f"[yellow]warning:[/] binding {host}: anyone who can reach this machine can use the model")
    generation = GenerationConfig(**({"max_new_tokens": max_new_tokens} if max_new_tokens else {}))

    def ready(server) -> None:
        names = ", ".join(server.model_names())
        typer.echo(f"serving {names} at http://{host}:{port}/v1 (model '{BASE_NAME}' is the base without adapters)")

    try:
        serve(model_or_run_dir, adapters, host=host, port=port, generation=generation, on_ready=ready)
    except (ServeError, ModelLoadError) as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(EXIT_UNREADABLE) from None
