"""The run report and `tunesmith runs`, on hand-made run directories."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

from typer.testing import CliRunner

from tests.compare.fixtures import make_run
from tunesmith.cli.main import app
from tunesmith.report import render_report, write_report
from tunesmith.report.collect import collect, guard_rails, key_metrics
from tunesmith.report.html import SECTIONS
from tunesmith.report.index import diff_runs, list_runs
from tunesmith.runs import EVAL_DIR, EVAL_SUMMARY_FILE, REPORT_FILE, SUMMARY_FILE

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(html: str):
    p = _Tags()
    p.feed(html)
    return p.tags


def test_report_has_every_section_and_only_embedded_images(tmp_path):
    run = make_run(tmp_path / "run")
    path = write_report(run)
    assert path == run / REPORT_FILE
    html = path.read_text(encoding="utf-8")
    tags = _tags(html)
    ids = [a.get("id") for t, a in tags if t == "section"]
    assert ids == [sid for sid, _ in SECTIONS]
    images = [a for t, a in tags if t == "img"]
    # data histogram, split similarity, loss curves, eval bars (no blind review yet: no win-rate chart)
    assert len(images) == 4
    for img in images:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1]).startswith(PNG_MAGIC)
    for t, a in tags:  # nothing to fetch: no script, no stylesheet link, no remote source
        assert t not in ("script", "link", "iframe")
        for attr in ("src", "href"):
            assert not (a.get(attr) or "").startswith(("http:", "https:", "//")), (t, a)


def test_first_screen_is_headline_metrics_and_guard_rails(tmp_path):
    run = make_run(tmp_path / "run")
    summary = json.loads((run / SUMMARY_FILE).read_text())
    summary.update(stop_reason="overfitting", why="early stop: overfitting")
    (run / SUMMARY_FILE).write_text(json.dumps(summary))
    html = render_report(run)
    headline = html.split('<section id="headline">')[1].split("</section>")[0]
    assert "early stop: overfitting" in headline and "Guard rails that fired" in headline
    assert "sql.execution_accuracy" in headline and "+0.6667" in headline  # 9/12 tuned vs 1/12 base


def test_absent_stages_say_so(tmp_path):
    run = make_run(tmp_path / "run", full=False)
    html = render_report(run)
    for sid in ("data", "split", "plan", "training", "blind"):
        section = html.split(f'<section id="{sid}">')[1].split("</section>")[0]
        assert 'class="absent"' in section, sid
    assert 'class="absent"' not in html.split('<section id="evaluation">')[1].split("</section>")[0]


def test_outputs_are_escaped(tmp_path):
    run = make_run(tmp_path / "run", n=3, full=False)
    rows = [json.loads(x) for x in (run / EVAL_DIR / "tuned.jsonl").read_text().splitlines()]
    rows[0]["output"] = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    (run / EVAL_DIR / "tuned.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    html = render_report(run)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert not any(t == "img" and a.get("src") == "x" for t, a in _tags(html))


def test_guard_rails_from_each_stage(tmp_path):
    run = make_run(tmp_path / "run")
    assert guard_rails(collect(run)) == ["eval: 3 base outputs hit max_new_tokens"]
    leaky = make_run(tmp_path / "leaky", leaked=4)
    assert "split: 4 held-out rows leak from train" in guard_rails(collect(leaky))[0]
    ev = json.loads((run / EVAL_DIR / EVAL_SUMMARY_FILE).read_text())
    ev["regression"]["flagged"] = True
    ev["models"]["tuned"]["unstopped"] = 2
    (run / EVAL_DIR / EVAL_SUMMARY_FILE).write_text(json.dumps(ev))
    fired = guard_rails(collect(run))
    assert any("catastrophic forgetting" in f for f in fired)
    assert any("2 tuned outputs never stopped" in f for f in fired)


def test_runs_list_show_and_diff(tmp_path):
    make_run(tmp_path / "runs" / "r1", lr=2e-4, sha="a" * 64)
    make_run(tmp_path / "runs" / "r2", lr=1e-4, sha="b" * 64, tuned_correct=lambda i: i % 2 == 0)
    (tmp_path / "runs" / "not-a-run").mkdir()
    rows = list_runs(tmp_path / "runs")
    assert [r["run"] for r in rows] == ["r1", "r2"]
    assert rows[0]["metrics"]["eval.sql.execution_accuracy"] == 9 / 12
    d = diff_runs(tmp_path / "runs" / "r1", tmp_path / "runs" / "r2")
    assert d.config == [("train.lr", 2e-4, 1e-4)]
    assert d.data == [("sha256", "a" * 64, "b" * 64)]
    acc = next(r for r in d.results if r[0] == "eval.sql.execution_accuracy")
    assert acc[1:3] == (9 / 12, 6 / 12) and abs(acc[3] - (6 / 12 - 9 / 12)) < 1e-12
    out = runner.invoke(app, ["runs", "diff", "r1", "r2", "--runs-dir", str(tmp_path / "runs")]).output
    assert "train.lr: 0.0002 -> 0.0001" in out and "sha256: aaaa" in out
    assert re.search(r"eval\.sql\.execution_accuracy: 0\.75 -> 0\.5\s+\(-0\.25\)", out)
    out = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path / "runs")]).output
    assert re.search(r"^r1 .* 0\.75 \(0\.08333\)", out, re.M) and "not-a-run" not in out
    r = runner.invoke(app, ["runs", "show", "nope", "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == 2 and "not a run directory" in r.output


def test_report_command(tmp_path):
    run = make_run(tmp_path / "run")
    r = runner.invoke(app, ["report", str(run)])
    assert r.exit_code == 0 and f"report: {run / REPORT_FILE}" in r.output
    assert "guard rail: eval: 3 base outputs" in r.output
    assert runner.invoke(app, ["report", str(tmp_path / "empty")]).exit_code == 2


def test_key_metrics_include_blind_review(tmp_path):
    from tunesmith.compare import build_sheet, cast_vote
    from tunesmith.compare.sheet import read_key

    run = make_run(tmp_path / "run", n=4)
    build_sheet(run, n=4)
    key = read_key(run)
    for item, k in key["items"].items():
        cast_vote(
            run, "ann", item, "A" if k["A"] == "tuned" else "B", items=set(key["items"]), sheet_id=key["sheet_id"]
        )
    m = key_metrics(collect(run))
    assert m["blind.win_rate"] == 1.0 and m["blind.votes"] == 4
    assert "tuned preferred in 100% of decisive votes" in render_report(run)


def test_a_nan_halted_run_still_gets_its_report(tmp_path):
    from tunesmith.runs import METRICS_FILE

    run = make_run(tmp_path / "run")
    with open(run / METRICS_FILE, "a") as f:
        f.write(json.dumps({"step": 21, "loss": "nan"}) + "\n" + '{"step": 22, "lo')  # and a line cut by the crash
    summary = json.loads((run / SUMMARY_FILE).read_text())
    summary.update(stop_reason="non_finite", why="stopped: loss or gradient became NaN/inf")
    (run / SUMMARY_FILE).write_text(json.dumps(summary))
    html = render_report(run)
    assert "train: stopped: loss or gradient became NaN/inf" in html.split('<section id="data">')[0]
    training = html.split('<section id="training">')[1].split("</section>")[0]
    assert "data:image/png;base64," in training
