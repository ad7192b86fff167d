"""The `tunesmith` command. Thin: each command parses its arguments, calls one library function,
and prints. Exit codes: 0 success; 1 the input has problems that block training (or training
stopped on a guard rail); 2 the input or config cannot be read at all, or an output cannot be
written (a path collision, a run directory in use, a full disk, ...); 3 an unexpected error (a
bug: the message gives the path of a log file holding the traceback); 130 interrupted (Ctrl-C,
SIGTERM: `train` saves a checkpoint first, `--resume` continues)."""

from __future__ import annotations

import logging
import sys

import typer

from tunesmith import allocator
from tunesmith.cli import compare, config, data, demo, evaluate, models, plan, report, runs, serve, train
from tunesmith.cli import run as run_cli
from tunesmith.cli.errors import EXIT_UNREADABLE, TunesmithGroup
from tunesmith.config import ConfigError

# peft imports bitsandbytes, whose CPU backend warns at import that it could not fetch an optional
# kernel from the hub, even for runs that never quantize. QLoRA works without it (measured ~13%
# slower per step than bf16 LoRA), so the warning only adds noise to every command.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

app = typer.Typer(cls=TunesmithGroup, no_args_is_help=True, add_completion=False, help=__doc__.split("\n\n")[0])
app.add_typer(data.app, name="data")
app.add_typer(models.app, name="model")
app.add_typer(config.app, name="config")
app.add_typer(evaluate.app, name="eval")
app.command("train")(train.train_command)
app.command("demo")(demo.demo_command)
app.command("compare")(compare.compare_command)
app.command("review")(compare.review_command)
app.command("unblind")(compare.unblind_command)
app.command("report")(report.report_command)
app.add_typer(runs.app, name="runs")
app.command("plan")(plan.plan_command)
app.command("advise")(plan.advise_command)
app.command("serve")(serve.serve_command)
app.command("run")(run_cli.run_command)

TRAINING_COMMANDS = ("train", "run", "demo")  # re-executed under tcmalloc/jemalloc when installed


def main() -> None:
    """The `tunesmith` console script. A training command first re-executes itself once under
    tcmalloc or jemalloc when the machine has one (`tunesmith.allocator`: less peak memory on CPU);
    `TUNESMITH_ALLOCATOR=system` keeps the C library's malloc. Done here, at the process's entry,
    and not in the commands: `app` invoked in-process (tests, notebooks) must never exec."""
    if len(sys.argv) > 1 and sys.argv[1] in TRAINING_COMMANDS:
        try:
            allocator.reexec()
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_UNREADABLE)
    app()


if __name__ == "__main__":
    main()
