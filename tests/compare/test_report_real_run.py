"""The report over files the real stages wrote: `data check` and `train` on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.compare.fixtures import eval_row
from tests.train.test_recipe import run_config, tiny_inputs
from tunesmith.report import render_report
from tunesmith.report.index import show_run
from tunesmith.runs import DATA_DIR, DATA_REPORT_FILE, EVAL_DIR, SUMMARY_FILE


@pytest.mark.slow
@pytest.mark.integration
def test_report_reads_what_data_check_and_train_wrote(tmp_path: Path):
    from tunesmith.data.check import check_file
    from tunesmith.data.report import write_report_json
    from tunesmith.train.recipe import train

    model, data = tiny_inputs(tmp_path)
    config = run_config(tmp_path, "real", "train.method=full", "train.epochs=1")
    train(config)
    run = config.run_dir
    report = check_file(str(data), config=config.data, plot_dir=run / DATA_DIR)
    write_report_json(report, run / DATA_DIR / DATA_REPORT_FILE)
    (run / EVAL_DIR).mkdir()
    (run / EVAL_DIR / "tuned.jsonl").write_text(json.dumps(eval_row(0, "tuned", correct=True)) + "\n")

    summary = json.loads((run / SUMMARY_FILE).read_text())
    html = render_report(run)
    training = html.split('<section id="training">')[1].split("</section>")[0]
    assert f"Best checkpoint: step {summary['best_step']}" in training
    assert "completed all planned steps" in training and "data:image/png;base64," in training
    data_section = html.split('<section id="data">')[1].split("</section>")[0]
    assert f"{report.rows} rows" in data_section and 'class="absent"' not in data_section
    config_section = html.split('<section id="config">')[1].split("</section>")[0]
    assert "torch" in config_section and "sha256" in config_section and "name: real" in config_section
    shown = show_run(run)
    assert shown["data"]["sha256"] == json.loads((run / "manifest.json").read_text())["data"]["sha256"]
    assert shown["metrics"]["train.best_val_loss"] == summary["best_val_loss"]
