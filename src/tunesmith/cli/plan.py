"""`tunesmith plan` (will it fit, what will it cost) and `tunesmith advise` (should you fine-tune at all)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tunesmith.cli.errors import EXIT_BLOCKING, EXIT_UNREADABLE, err_console

console = Console(highlight=False)


def _gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB"


def plan_command(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Hub id or local model directory (only small files are read).")
    ],
    method: Annotated[str, typer.Option(help="full, lora or qlora.")] = "lora",
    seq_len: Annotated[
        int | None, typer.Option("--seq-len", help="Tokens per example (default: the data's longest, else 1024).")
    ] = None,
    micro_batch: Annotated[
        int | None, typer.Option("--micro-batch", help="Check this micro-batch (default: the largest that fits).")
    ] = None,
    effective_batch: Annotated[int, typer.Option("--effective-batch", help="Examples per optimizer step.")] = 16,
    gpu: Annotated[str | None, typer.Option("--gpu", help="A GPU by name (H100, A100-80GB, L4, RTX4090, ...).")] = None,
    gpu_memory: Annotated[str | None, typer.Option("--gpu-memory", help="Memory per GPU, e.g. 24GiB or 80GB.")] = None,
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs; > 1 plans ZeRO-3 / FSDP sharding.")] = 1,
    data: Annotated[
        Path | None, typer.Option("--data", help="A `data check --report` JSON, or a data file to count tokens in.")
    ] = None,
    epochs: Annotated[float, typer.Option(help="Epochs, for time and cost.")] = 3.0,
    lora_r: Annotated[int, typer.Option("--lora-r", help="LoRA rank.")] = 16,
    gradient_checkpointing: Annotated[
        bool, typer.Option("--gradient-checkpointing", help="Plan with activation recomputation.")
    ] = False,
    price_per_hour: Annotated[
        float | None, typer.Option("--price-per-hour", help="US$ per GPU-hour (default: the table's).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Will it fit, what will it cost: parameters, memory per term, micro-batch, time, licence, base vs instruct."""
    from tunesmith.plan import PlanError, plan_model
    from tunesmith.plan.hardware import parse_bytes

    if method not in ("full", "lora", "qlora"):
        err_console.print(f"[bold red]error:[/] --method {method!r}: expected full, lora or qlora")
        raise typer.Exit(EXIT_UNREADABLE)
    try:
        plan = plan_model(
            model,
            method=method,  # type: ignore[arg-type]
            seq_len=seq_len,
            micro_batch=micro_batch,
            effective_batch=effective_batch,
            gpu=gpu,
            gpu_memory=parse_bytes(gpu_memory) if gpu_memory else None,
            gpus=gpus,
            data=data,
            epochs=epochs,
            lora_r=lora_r,
            gradient_checkpointing=gradient_checkpointing,
            price_per_hour=price_per_hour,
        )
    except PlanError as e:
        err_console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        raise typer.Exit(EXIT_UNREADABLE) from None
    if as_json:
        print(json.dumps(plan.to_json(), indent=2))
    else:
        print_plan(plan, console)
    if not plan.fit.fits:
        raise typer.Exit(EXIT_BLOCKING)


def print_plan(plan, console: Console) -> None:
    from tunesmith.plan.report import plan_lines

    table = Table(title=f"plan: {plan.model} ({plan.method})", show_header=False, title_justify="left")
    for key, value in plan_lines(plan):
        table.add_row(key, value)
    console.print(table)


def _ask(prompt: str, default: str) -> str:
    return typer.prompt(prompt, default=default)


def advise_command(
    requirements_change: Annotated[
        str | None, typer.Option("--requirements-change", help="rarely, monthly, weekly or daily.")
    ] = None,
    examples: Annotated[int | None, typer.Option("--examples", help="Good, reviewed examples you have.")] = None,
    fresh_facts: Annotated[
        bool | None, typer.Option("--fresh-facts/--no-fresh-facts", help="Answers need new or changing facts.")
    ] = None,
    citations: Annotated[
        bool | None, typer.Option("--citations/--no-citations", help="Answers must cite sources.")
    ] = None,
    format_consistency: Annotated[
        str | None, typer.Option("--format", help="How consistent the output format must be: loose, moderate, strict.")
    ] = None,
    requests_per_month: Annotated[int | None, typer.Option("--requests-per-month", help="Request volume.")] = None,
    instruction_tokens: Annotated[
        int | None,
        typer.Option("--instruction-tokens", help="Tokens of instructions and examples sent with each request."),
    ] = None,
    price_per_million: Annotated[
        float | None, typer.Option("--price-per-million", help="US$ per million input tokens.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Should you fine-tune at all? Prompting, in-context examples, RAG or fine-tuning, with the reasons and the cost at scale."""
    from tunesmith.plan.advise import Task, advise

    given = dict(
        requirements_change=requirements_change,
        examples=examples,
        fresh_facts=fresh_facts,
        citations=citations,
        format_consistency=format_consistency,
        requests_per_month=requests_per_month,
        instruction_tokens=instruction_tokens,
        price_per_million=price_per_million,
    )
    interactive = sys.stdin.isatty() and not as_json
    questions = {
        "requirements_change": ("How often do the requirements change? (rarely/monthly/weekly/daily)", "rarely", str),
        "examples": ("How many good, reviewed examples do you have?", "0", int),
        "fresh_facts": ("Do answers need fresh or changing facts? (y/n)", "n", lambda s: s.lower().startswith("y")),
        "citations": ("Must answers cite sources? (y/n)", "n", lambda s: s.lower().startswith("y")),
        "format_consistency": ("How consistent must the format be? (loose/moderate/strict)", "moderate", str),
        "requests_per_month": ("Requests per month?", "0", int),
        "instruction_tokens": ("Tokens of instructions + examples per request?", "0", int),
        "price_per_million": ("US$ per million input tokens?", "0", float),
    }
    values = {}
    for key, value in given.items():
        if value is None and interactive:
            text, default, cast = questions[key]
            try:
                value = cast(_ask(text, default))
            except ValueError:
                err_console.print(f"[bold red]error:[/] {key}: not a number")
                raise typer.Exit(EXIT_UNREADABLE) from None
        if value is not None:
            values[key] = value
    try:
        task = Task(**values)
        if task.requirements_change not in ("rarely", "monthly", "weekly", "daily"):
            raise ValueError(
                f"--requirements-change {task.requirements_change!r}: expected rarely, monthly, weekly or daily"
            )
        if task.format_consistency not in ("loose", "moderate", "strict"):
            raise ValueError(f"--format {task.format_consistency!r}: expected loose, moderate or strict")
    except ValueError as e:
        err_console.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(EXIT_UNREADABLE) from None
    advice = advise(task)
    if as_json:
        print(json.dumps(advice.to_json(), indent=2))
        return
    console.print(f"[bold]recommendation:[/] {' + '.join(advice.recommendation)}")
    for r in advice.reasons:
        console.print(f"  {r.rule} → {r.says}: {r.why}")
    console.print(
        f"instructions cost ${advice.monthly_instruction_cost:,.2f}/month, ${advice.yearly_instruction_cost:,.2f}/year "
        f"({task.instruction_tokens:,} tokens × {task.requests_per_month:,} requests × ${task.price_per_million:g}/M)"
    )
    for n in advice.notes:
        console.print(f"  note: {n}")
