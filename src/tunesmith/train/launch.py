"""Multi-process launch: build the torchrun / accelerate command that re-runs `tunesmith train`
in N processes. The distributed work itself is accelerate's (DDP, DeepSpeed, FSDP); this only
spells the command so users need not.

On CPU, `accelerate launch --cpu --num_processes 2` starts ONE process (measured), so plain data
parallel goes through torchrun, which starts N real gloo ranks; DeepSpeed and FSDP go through
`accelerate launch` with one of the shipped configs.
"""

from __future__ import annotations

import sys
from typing import Literal

from tunesmith import accelerate_configs
from tunesmith.config import ConfigError

Launcher = Literal["torchrun", "accelerate"]


def launch_command(
    train_args: list[str], *, num_processes: int, launcher: Launcher = "torchrun", accelerate_config: str | None = None
) -> list[str]:
    """The command that runs `tunesmith train <train_args>` in `num_processes` processes."""
    if num_processes < 1:
        raise ConfigError(f"--num-processes must be at least 1, got {num_processes}")
    if launcher not in ("torchrun", "accelerate"):
        raise ConfigError(f"--launcher must be torchrun or accelerate, got {launcher!r}")
    if accelerate_config is not None:
        if launcher != "accelerate":
            raise ConfigError("--accelerate-config needs --launcher accelerate")
        try:
            config_file = str(accelerate_configs.path(accelerate_config))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    entry = ["-m", "tunesmith.cli.main", "train", *train_args]
    if launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={num_processes}",
            *entry,
        ]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", f"--num_processes={num_processes}"]
    if accelerate_config is not None:
        cmd.append(f"--config_file={config_file}")
    elif num_processes > 1:
        cmd.append("--multi_gpu")
    return [*cmd, *entry]
