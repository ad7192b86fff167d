"""How the CLI turns errors into a message and an exit code (no tracebacks for people).

Expected failures (unreadable input or config, a path that cannot be written, a model or tokenizer
that cannot be loaded, a run directory in use, a full disk) print one message naming the file and
what to do, and exit 2. Anything else is a bug: `TunesmithGroup` prints one line and the path of a
log file holding the traceback, and exits 3. Ctrl-C exits 130.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from tunesmith.config import ConfigError
from tunesmith.data.schema import DataError
from tunesmith.runs import RunError

EXIT_OK, EXIT_BLOCKING, EXIT_UNREADABLE = 0, 1, 2
EXIT_INTERNAL = 3  # an unexpected error (a bug): the traceback is in a log file, its path printed
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, the shell's convention)
LOG_DIR_ENV = "TUNESMITH_LOG_DIR"  # where unexpected tracebacks go (default: the temp directory)
err_console = Console(stderr=True)

# What to do about an OSError, by errno: the message names the file, this says how to fix it.
_OS_HINTS = {
    errno.ENOENT: "no such file or directory; check the path",
    errno.EACCES: "permission denied; check the permissions or write somewhere else",
    errno.EPERM: "operation not permitted; check the permissions or write somewhere else",
    errno.EROFS: "read-only file system; write somewhere else",
    errno.ENOSPC: "no space left on device; free some space or write somewhere else",
    errno.EDQUOT: "disk quota exceeded; free some space or write somewhere else",
    errno.ENOTDIR: "a part of this path is a file, not a directory; fix the path",
    errno.EISDIR: "is a directory; give a file inside it",
    errno.ENAMETOOLONG: "file name too long",
}


def describe_os_error(e: OSError) -> str:
    """One sentence for an OSError: the file, what went wrong, what to do."""
    where = e.filename if e.filename is not None else None
    hint = _OS_HINTS.get(e.errno or -1)
    if where is None:  # our own OSErrors (ModelLoadError, ...) carry a whole sentence already
        return str(e) if not hint or hint.split(";")[0] in str(e) else f"{e}: {hint}"
    return f"{where}: {hint or e.strerror or e}"


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    try:
        yield
    except (DataError, ConfigError, RunError) as e:
        _fail(str(e))
    except ValidationError as e:  # a config field set from a command-line option
        _fail("; ".join(f"{'.'.join(map(str, err['loc'])) or e.title}: {err['msg']}" for err in e.errors()))
    except OSError as e:  # unreadable/unwritable paths, models and tokenizers that cannot load, full disks
        _fail(describe_os_error(e))
    except UnicodeDecodeError as e:
        _fail(f"a file is not valid UTF-8 ({e.reason} at byte {e.start}); re-save it as UTF-8")


@contextlib.contextmanager
def readable_errors(*types: type[Exception]) -> Iterator[None]:
    """A command's own expected errors (e.g. a file in the wrong format): their message, exit 2."""
    try:
        yield
    except types as e:
        _fail(str(e))


def _fail(message: str) -> None:
    err_console.print("[bold red]error:[/]", escape(message), highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_UNREADABLE) from None


def write_crash_log(exc: BaseException) -> Path | None:
    """The traceback into a log file (TUNESMITH_LOG_DIR, else the temp directory); its path, or None."""
    directory = Path(os.environ.get(LOG_DIR_ENV) or tempfile.gettempdir())
    path = directory / f"tunesmith-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # 0600: a traceback can quote the user's data, and the temp directory is shared.
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
            f.write(f"tunesmith {' '.join(sys.argv[1:])}\n\n")
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except OSError:
        return None
    return path


class TunesmithGroup(TyperGroup):
    """The top-level command group: every command, present and future, runs inside this handler."""

    def invoke(self, ctx: Any) -> Any:
        try:
            with friendly_errors():
                return super().invoke(ctx)
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as e:
            # typer's Exit/Abort and usage errors are exceptions too (RuntimeError subclasses in the
            # typer releases that vendor click): they carry their own exit code.
            if isinstance(e, (typer.Exit, typer.Abort)) or type(e).__module__.startswith(("typer.", "click.")):
                raise
            log = write_crash_log(e)
            where = f"the traceback is in {log}" if log else "no log file could be written"
            err_console.print(
                f"[bold red]internal error:[/] {escape(type(e).__name__)}: {escape(str(e).splitlines()[0] if str(e) else '')}\n"
                f"This is a bug in tunesmith, not in your input; {where} (please attach it to a bug report).",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_INTERNAL) from None
