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
