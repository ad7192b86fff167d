import sys

import pytest

from tunesmith import accelerate_configs
from tunesmith.config import ConfigError
from tunesmith.train.launch import launch_command


def test_torchrun_runs_n_real_processes_of_the_same_command():
    cmd = launch_command(["c.yaml", "train.lr=1e-4"], num_processes=2)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=2" in cmd and "--standalone" in cmd
    assert cmd[-5:] == ["-m", "tunesmith.cli.main", "train", "c.yaml", "train.lr=1e-4"]


def test_accelerate_with_a_shipped_config():
    cmd = launch_command(["c.yaml"], num_processes=4, launcher="accelerate", accelerate_config="deepspeed_zero3")
    assert f"--config_file={accelerate_configs.path('deepspeed_zero3')}" in cmd and "--num_processes=4" in cmd
    assert accelerate_configs.path("deepspeed_zero3").is_file()


def test_bad_launch_options_are_config_errors():
    with pytest.raises(ConfigError, match="unknown accelerate config"):
        launch_command([], num_processes=2, launcher="accelerate", accelerate_config="zero9")
    with pytest.raises(ConfigError, match="needs --launcher accelerate"):
        launch_command([], num_processes=2, accelerate_config="fsdp")
    with pytest.raises(ConfigError, match="at least 1"):
        launch_command([], num_processes=0)
    with pytest.raises(ConfigError, match="torchrun or accelerate"):
        launch_command([], num_processes=2, launcher="mpirun")
