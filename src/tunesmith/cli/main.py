"""The `tunesmith` command. Thin: each command parses its arguments, calls one library function,
and prints. Exit codes: 0 success; 1 the input has problems that block training (or training
stopped on a guard rail); 2 the input or config cannot be read at all."""

from __future__ import annotations

import logging

import typer

from tunesmith.cli import data, demo, models, serve, train

# peft imports bitsandbytes, whose CPU backend warns at import that it could not fetch an optional
# kernel from the hub, even for runs that never quantize. QLoRA works without it (measured ~13%
# slower per step than bf16 LoRA), so the warning only adds noise to every command.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.split("\n\n")[0])
app.add_typer(data.app, name="data")
app.add_typer(models.app, name="model")
app.command("train")(train.train_command)
app.command("demo")(demo.demo_command)
app.command("serve")(serve.serve_command)

if __name__ == "__main__":
    app()
