"""Accelerate launch configs shipped with tunesmith (DeepSpeed ZeRO-2/3, FSDP2).

Plain data parallel needs no config: `torchrun --nproc_per_node N -m tunesmith.cli.main train ...`
(or `accelerate launch --multi_gpu --num_processes N ...`). Note that on CPU
`accelerate launch --cpu --num_processes 2` starts a single process; use torchrun there.
"""

from __future__ import annotations

from pathlib import Path

NAMES = ("deepspeed_zero2", "deepspeed_zero3", "fsdp")


def path(name: str) -> Path:
    """The YAML file for `name` (one of NAMES), to pass to `accelerate launch --config_file`."""
    if name not in NAMES:
        raise ValueError(f"unknown accelerate config {name!r}; shipped: {', '.join(NAMES)}")
    return Path(__file__).with_name(f"{name}.yaml")
