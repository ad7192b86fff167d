from pathlib import Path

import pytest

from tunesmith.config import ConfigError, dump_config, load_config


def test_defaults_follow_the_method():
    assert load_config().train.learning_rate == 2e-4
    assert load_config(overrides=["train.method=full"]).train.learning_rate == 2e-5
    assert load_config(overrides=["train.method=qlora"]).train.learning_rate == 2e-4


def test_dotted_overrides_parse_yaml_scalars():
    config = load_config(overrides=["train.lr=1e-4", "lora.r=32", "train.report_to=[]", "data.max_seq_len=512"])
    assert config.train.lr == pytest.approx(1e-4)
    assert config.lora.r == 32 and config.train.report_to == [] and config.data.max_seq_len == 512


def test_unknown_keys_are_errors_that_name_the_key(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lerning_rate: 1e-4\n")
    with pytest.raises(ConfigError, match=r"train\.lerning_rate: unknown key"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"lora\.rank: unknown key"):
        load_config(overrides=["lora.rank=8"])


def test_bad_values_and_files_are_reported(tmp_path: Path):
    with pytest.raises(ConfigError, match="train.method"):
        load_config(overrides=["train.method=prefix"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(overrides=["train.lr"])
    with pytest.raises(ConfigError, match="unknown finding codes"):
        load_config(overrides=["data.drop=[refusal, typo_code]"])


def test_dump_round_trips(tmp_path: Path):
    config = load_config(overrides=["name=x", "train.epochs=1.5"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


@pytest.mark.parametrize("lr", ["-1e-3", "0"])
def test_a_learning_rate_that_cannot_train_is_refused(lr: str):
    # -1e-3 used to crash inside torch after the run directory was made; 0 trained steps that changed nothing.
    with pytest.raises(ConfigError, match=r"train\.lr: Input should be greater than 0"):
        load_config(overrides=[f"train.lr={lr}"])


def test_effective_batch_smaller_than_micro_batch_is_refused():
    with pytest.raises(ConfigError, match="effective_batch=4 is smaller than micro_batch=8"):
        load_config(overrides=["train.effective_batch=4", "train.micro_batch=8"])
    assert load_config(overrides=["train.effective_batch=8", "train.micro_batch=8"]).train.micro_batch == 8


def test_a_config_path_that_is_a_directory_or_not_utf8_is_one_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="is a directory; give the config YAML file"):
        load_config(tmp_path)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text .*save it as UTF-8"):
        load_config(latin1)
