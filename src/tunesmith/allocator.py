"""The C allocator that training on CPU runs under: tcmalloc (or jemalloc) when the system has one.

Why: on CPU every activation, gradient and optimizer buffer PyTorch allocates goes through the C
library's malloc. glibc keeps freed blocks for reuse and splits them across per-thread arenas, so
the heap grows past what is live: on the small benchmark model about 0.9 GB of a 2.3 GB peak was
memory glibc held (bench/README.md, "Where the rest of the peak RSS goes"). Handing large blocks
straight back to the kernel (`MALLOC_MMAP_THRESHOLD_`) removes it, but steps ran 1.8x slower (page faults).
tcmalloc and jemalloc reuse memory by size class and return what they do not reuse; PyTorch's own
CPU performance guide recommends them. Measured on the small model, full fine-tuning: tcmalloc
-20% peak RSS at glibc's speed; jemalloc -23% but 5-12% slower (bench/README.md), hence the order.

An allocator can only be chosen before the process starts (`LD_PRELOAD`), so the `tunesmith`
console script re-executes a training command (`train`, `run`, `demo`) once under it (`reexec`,
called from `tunesmith.cli.main.main`), the way `python -m torch.backends.xeon.run_cpu
--enable-tcmalloc` does. `TUNESMITH_ALLOCATOR` chooses: `auto` (default: tcmalloc, else jemalloc,
else the system's), `tcmalloc`, `jemalloc`, or `system` (never re-execute). Neither is a Python
package: Debian/Ubuntu `apt-get install libtcmalloc-minimal4` (or `libjemalloc2`), conda
`conda install gperftools`; without one, training runs on glibc's malloc as before. The run's
manifest.json records which one it ran under, and the plan's CPU memory estimate follows it.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from tunesmith.config import ConfigError

ENV = "TUNESMITH_ALLOCATOR"
_MARK = "TUNESMITH_ALLOCATOR_LOADED"  # set in the re-executed process: never loop
LIBRARIES = {  # auto's order of preference; the file names each library goes by, most specific first
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so"),
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
}
# jemalloc's defaults keep freed pages for 10 s before returning them; a training step frees and
# re-allocates its activations every few seconds, so those pages would count twice in the peak.
# Return them after 1 s from a background thread (not on the training thread).
JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"


def _search_dirs() -> list[Path]:
    dirs = [Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"]
    if os.environ.get("CONDA_PREFIX"):
        dirs.append(Path(os.environ["CONDA_PREFIX"]) / "lib")
    machine = os.uname().machine
    dirs += [Path(f"/usr/lib/{machine}-linux-gnu"), Path("/usr/lib64"), Path("/usr/lib"), Path("/usr/local/lib")]
    return dirs


def find(name: str) -> Path | None:
    """The shared library of allocator `name` (jemalloc, tcmalloc) on this machine, or None."""
    for directory in _search_dirs():
        for file in LIBRARIES[name]:
            if (directory / file).is_file():
                return directory / file
    return None


@functools.cache  # LD_PRELOAD is fixed when the process starts: read /proc/self/maps once
def loaded() -> str | None:
    """Which of the allocators this process runs under (from /proc/self/maps), or None."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    return next(
        (name for name, files in LIBRARIES.items() if any(f.split(".so")[0] + ".so" in maps for f in files)), None
    )


def running() -> str:
    """The allocator this process runs under, "system" for the C library's malloc: what the
    manifest records and what a plan made inside a training process assumes."""
    return loaded() or "system"


def choose(setting: str | None = None) -> tuple[str, Path] | None:
    """(allocator, library) that `setting` (default: $TUNESMITH_ALLOCATOR, else auto) asks for and
    this machine has; None for `system`, or when none is installed. An explicit name that is not
    installed is an error: the user asked for it."""
    setting = (setting or os.environ.get(ENV) or "auto").strip().lower()
    if setting == "system":
        return None
    if setting not in ("auto", *LIBRARIES):
        raise ConfigError(f"{ENV}={setting!r}: expected auto, tcmalloc, jemalloc or system")
    for name in LIBRARIES if setting == "auto" else (setting,):
        path = find(name)
        if path is not None:
            return name, path
    if setting != "auto":
        raise ConfigError(
            f"{ENV}={setting}: no {setting} library found in {', '.join(map(str, _search_dirs()))}; "
            f"install it (Debian: apt-get install {'libjemalloc2' if setting == 'jemalloc' else 'libtcmalloc-minimal4'}) "
            f"or set {ENV}=auto"
        )
    return None


def planned() -> str:
    """The allocator a `tunesmith train` started now runs under: this process's if it already runs
    under one, else what `choose` picks; "system" for the C library's malloc. The plan's CPU
    memory estimate depends on it (plan/memory.py)."""
    current = loaded()
    if current:
        return current
    chosen = choose()
    return chosen[0] if chosen else "system"


def environment(name: str, library: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with `library` preloaded and its settings."""
    env = dict(os.environ if env is None else env)
    env["LD_PRELOAD"] = ":".join(p for p in (str(library), env.get("LD_PRELOAD", "")) if p)
    if name == "jemalloc":
        env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    env[_MARK] = name
    return env


def reexec() -> None:
    """Re-execute this command under the chosen allocator, once; a no-op when it already runs under
    one, when `TUNESMITH_ALLOCATOR=system`, or when none is installed. Call it before heavy imports."""
    if os.environ.get(_MARK) or loaded() or not sys.platform.startswith("linux"):
        return
    chosen = choose()
    if chosen is None:
        return
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], environment(*chosen))
