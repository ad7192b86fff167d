from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from tunesmith.cli.main import app
from tunesmith.config import Config, ConfigError, commented_yaml, default_config, dump_config, load_config

NAMED = ["model.name_or_path=some/model", "data.path=train.jsonl"]  # what every runnable config names


def test_defaults_follow_the_method():
    assert load_config(overrides=NAMED).train.learning_rate == 2e-4
    assert load_config(overrides=[*NAMED, "train.method=full"]).train.learning_rate == 2e-5
    assert load_config(overrides=[*NAMED, "train.method=qlora"]).train.learning_rate == 2e-4


def test_dotted_overrides_parse_yaml_scalars():
    config = load_config(overrides=[*NAMED, "train.lr=1e-4", "lora.r=32", "train.report_to=[]", "data.max_seq_len=512"])
    assert config.train.lr == pytest.approx(1e-4)
    assert config.lora.r == 32 and config.train.report_to == [] and config.data.max_seq_len == 512


def test_a_config_must_name_its_model_and_data(tmp_path: Path):
    with pytest.raises(ConfigError) as e:
        load_config()
    assert "model.name_or_path: required" in str(e.value) and "data.path: required" in str(e.value)
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name_or_path: m\n")
    with pytest.raises(ConfigError, match="data.path: required") as e:
        load_config(path)
    assert "model.name_or_path" not in str(e.value)
    # The data commands name the file themselves.
    assert load_config(require_inputs=False).data.path is None


def test_unknown_keys_are_errors_that_name_the_key(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lerning_rate: 1e-4\n")
    with pytest.raises(ConfigError, match=r"train\.lerning_rate: unknown key"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"lora\.rank: unknown key"):
        load_config(overrides=[*NAMED, "lora.rank=8"])


def test_bad_values_and_files_are_reported(tmp_path: Path):
    with pytest.raises(ConfigError, match="train.method"):
        load_config(overrides=[*NAMED, "train.method=prefix"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(overrides=["train.lr"])
    with pytest.raises(ConfigError, match="unknown finding codes"):
        load_config(overrides=[*NAMED, "data.drop=[refusal, typo_code]"])


def test_dump_round_trips(tmp_path: Path):
    config = load_config(overrides=[*NAMED, "name=x", "train.epochs=1.5"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


def _fields(cls: type[BaseModel], prefix: str = ""):
    for name, info in cls.model_fields.items():
        yield prefix + name, info
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield from _fields(info.annotation, f"{prefix}{name}.")


def test_every_config_field_is_documented():
    undocumented = [name for name, info in _fields(Config) if not (info.description or "").strip()]
    assert undocumented == []


def test_config_show_prints_every_field_with_its_documentation_as_loadable_yaml(tmp_path: Path):
    config = load_config(overrides=[*NAMED, "train.lr=3e-4", "model.chat_template={{ messages }}\nline two"])
    text = commented_yaml(config)
    assert yaml.safe_load(text) == config.model_dump(mode="json")  # the comments are the only addition
    (tmp_path / "shown.yaml").write_text(text)
    assert load_config(tmp_path / "shown.yaml") == config
    lines = commented_yaml(load_config(overrides=NAMED)).splitlines()
    keys = [i for i, line in enumerate(lines) if not line.lstrip().startswith("#")]
    assert len(keys) == len(list(_fields(Config)))  # one line per field
    assert all(lines[i - 1].lstrip().startswith("# ") for i in keys)  # each right below its documentation


def test_config_show_cli(tmp_path: Path):
    runner = CliRunner()
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name_or_path: m\ndata:\n  path: d.jsonl\n")
    result = runner.invoke(app, ["config", "show", str(path), "train.epochs=2"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["train"]["epochs"] == 2 and shown["model"]["name_or_path"] == "m"
    assert "# Passes over the training examples" in result.output
    result = runner.invoke(app, ["config", "show", "--defaults"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output) == default_config().model_dump(mode="json")
    result = runner.invoke(app, ["config", "show", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "no such config file" in result.output


@pytest.mark.parametrize("lr", ["-1e-3", "0"])
def test_a_learning_rate_that_cannot_train_is_refused(lr: str):
    # -1e-3 used to crash inside torch after the run directory was made; 0 trained steps that changed nothing.
    with pytest.raises(ConfigError, match=r"train\.lr: Input should be greater than 0"):
        load_config(overrides=[*NAMED, f"train.lr={lr}"])


def test_effective_batch_smaller_than_micro_batch_is_refused():
    with pytest.raises(ConfigError, match="effective_batch=4 is smaller than micro_batch=8"):
        load_config(overrides=[*NAMED, "train.effective_batch=4", "train.micro_batch=8"])
    assert load_config(overrides=[*NAMED, "train.effective_batch=8", "train.micro_batch=8"]).train.micro_batch == 8


def test_a_config_path_that_is_a_directory_or_not_utf8_is_one_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="is a directory; give the config YAML file"):
        load_config(tmp_path)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text .*save it as UTF-8"):
        load_config(latin1)
