"""`tunesmith report RUN_DIR`: one self-contained `report.html` a team lead reads to decide whether to ship.

Self-contained means: styles inline, no script, every picture a base64 `data:` URI, no link to
anything on the network, so the file can be mailed and opened offline. Everything taken from the
run (outputs, prompts, config) is HTML-escaped: a model output containing `<script>` is text.
The first screen is the answer: headline metrics before/after and every guard rail that fired.
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any

from tunesmith.report.collect import collect, eval_metrics, guard_rails
from tunesmith.report.plots import eval_png, loss_png, win_rate_png
from tunesmith.runs import DATA_DIR, LENGTHS_PLOT_FILE, LOSS_PLOT, PLOTS_DIR, REPORT_FILE, SPLIT_DIR, write_text

SECTIONS = [
    ("headline", "Headline"),
    ("data", "Data"),
    ("split", "Split and leakage"),
    ("plan", "Plan"),
    ("training", "Training"),
    ("evaluation", "Evaluation: base vs tuned"),
    ("regression", "Regression check"),
    ("judge", "LLM judge"),
    ("blind", "Blind review"),
    ("config", "Config and versions"),
]
EXAMPLES = 3  # example outputs shown side by side
_OUTPUT_CHARS = 1500  # an example output is cut here; the eval files hold the whole text

_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:1em 1.5em 4em}
h1{margin:.4em 0 .1em} h2{border-bottom:2px solid #d6d9e0;padding-bottom:.2em;margin-top:2em}
section{margin-bottom:1em} table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #d6d9e0;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eef0f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.up{color:#15803d;font-weight:600} .down{color:#b91c1c;font-weight:600}
.fired{background:#fee2e2;border:1px solid #b91c1c;border-radius:6px;padding:.5em 1em}
.ok{background:#dcfce7;border:1px solid #15803d;border-radius:6px;padding:.5em 1em}
.absent{color:#6b7280;font-style:italic}
pre{background:#fff;border:1px solid #d6d9e0;padding:.6em;overflow:auto;max-height:24em;white-space:pre-wrap}
img{max-width:100%;border:1px solid #d6d9e0;background:#fff}
nav a{margin-right:.8em} .ex{display:grid;grid-template-columns:1fr 1fr;gap:.8em}
"""


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    return f'<p><img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"></p>'


def _file_img(path: Path, alt: str) -> str:
    return _img(path.read_bytes(), alt) if path.is_file() else ""


def _absent(what: str, how: str) -> str:
    return f'<p class="absent">No {escape(what)} in this run ({escape(how)}).</p>'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return escape(json.dumps(v, ensure_ascii=False)[:400])
    return escape(str(v))


def _table(obj: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """Any JSON object as a two-column table; nested objects as nested tables one level deep."""
    rows = []
    for k, v in obj.items():
        if k in skip:
            continue
        if isinstance(v, dict) and v and all(not isinstance(x, (dict, list)) for x in v.values()):
            inner = "".join(f"<tr><td>{escape(str(a))}</td><td class='num'>{_fmt(b)}</td></tr>" for a, b in v.items())
            rows.append(f"<tr><th>{escape(str(k))}</th><td><table>{inner}</table></td></tr>")
        else:
            rows.append(f"<tr><th>{escape(str(k))}</th><td>{_fmt(v)}</td></tr>")
    return f"<table>{''.join(rows)}</table>" if rows else ""


def _delta(base: float | None, tuned: float | None) -> str:
    if base is None or tuned is None:
        return "<td></td>"
    d = tuned - base
    cls = "up" if d > 0 else "down" if d < 0 else ""
    return f"<td class='num {cls}'>{d:+.4g}</td>"


def _metrics_table(rows: list[tuple[str, float | None, float | None]]) -> str:
    body = "".join(
        f"<tr><td>{escape(n)}</td><td class='num'>{'' if b is None else _fmt(b)}</td>"
        f"<td class='num'>{'' if t is None else _fmt(t)}</td>{_delta(b, t)}</tr>"
        for n, b, t in rows
    )
    return f"<table><tr><th>metric</th><th>base</th><th>tuned</th><th>change</th></tr>{body}</table>"


def _headline(info: dict[str, Any]) -> str:
    parts = [f"<h1>{escape(info['run'])}</h1>", f"<p>Run directory <code>{escape(info['dir'])}</code></p>"]
    fired = guard_rails(info)
    if fired:
        items = "".join(f"<li>{escape(f)}</li>" for f in fired)
        parts.append(
            f'<div class="fired" id="guard-rails"><strong>Guard rails that fired</strong><ul>{items}</ul></div>'
        )
    else:
        parts.append('<div class="ok" id="guard-rails"><strong>No guard rail fired.</strong></div>')
    rows = eval_metrics(info)
    train = info.get("train") or {}
    if train.get("best_val_loss") is not None:
        rows = [("validation loss (best)", None, train["best_val_loss"]), *rows]
    blind = info.get("blind") or {}
    overall = blind.get("overall") or {}
    if overall.get("win_rate") is not None:
        lo, hi = overall["ci95"]
        parts.append(
            f"<p><strong>Blind review:</strong> tuned preferred in {overall['win_rate']:.0%} of decisive votes "
            f"(95% CI {lo:.0%}-{hi:.0%}; {overall['wins']} wins, {overall['losses']} losses, {overall['ties']} ties) "
            f"against {escape(str(blind.get('against')))}.</p>"
        )
    parts.append(_metrics_table(rows) if rows else _absent("evaluation", "run `tunesmith eval RUN_DIR`"))
    return "".join(parts)


def _data(info: dict[str, Any], run: Path) -> str:
    data = info.get("data")
    if not data:
        return _absent("data check report", "run `tunesmith data check` with --report")
    counts = data.get("counts") or {}
    sev = data.get("severities") or {}
    table = "".join(
        f"<tr><td>{escape(c)}</td><td>{escape(sev.get(c, ''))}</td><td class='num'>{n}</td></tr>"
        for c, n in counts.items()
    )
    out = f"<p>{escape(str(data.get('verdict', '')))}</p>"
    out += f"<p>{_fmt(data.get('rows', '?'))} rows in <code>{escape(str(data.get('path', '')))}</code></p>"
    if table:
        out += f"<table><tr><th>finding</th><th>severity</th><th>rows</th></tr>{table}</table>"
    tokens = (data.get("stats") or {}).get("tokens")
    if tokens:
        out += "<p>Tokens per example:</p>" + _table(tokens)
    return out + _file_img(run / DATA_DIR / LENGTHS_PLOT_FILE, "token length histogram")


def _split(info: dict[str, Any], run: Path) -> str:
    split = info.get("split")
    if not split:
        return _absent("split report", "run `tunesmith data split`")
    out = ""
    if isinstance(split.get("counts"), dict):
        out += "<p>Rows per split:</p>" + _table(split["counts"])
    if isinstance(split.get("groups"), dict):
        out += "<p>Groups of near duplicates and paraphrases (each lies wholly in one split):</p>" + _table(
            split["groups"]
        )
    leakage = split.get("leakage") or {}
    per = [(n, leakage[n]) for n in ("val", "test") if isinstance(leakage.get(n), dict)]
    if per:
        body = "".join(
            f"<tr><td>{n}</td><td class='num'>{_fmt(d.get('rows'))}</td><td class='num'>{_fmt(d.get('above_threshold'))}</td>"
            f"<td class='num'>{_fmt(d.get('median'))}</td><td class='num'>{_fmt(d.get('max'))}</td></tr>"
            for n, d in per
        )
        out += (
            f"<p>Leakage check: nearest train row of every held-out row (threshold {_fmt(leakage.get('threshold'))}).</p>"
            "<table><tr><th>split</th><th>rows</th><th>leaked</th><th>median similarity</th><th>max</th></tr>"
            f"{body}</table>"
        )
    strata = split.get("strata")
    if isinstance(strata, dict) and strata:
        seen = {c for v in strata.values() if isinstance(v, dict) for c in v}
        cols = [c for c in ("train", "val", "test") if c in seen] + sorted(seen - {"train", "val", "test"})
        body = "".join(
            f"<tr><td>{escape(str(k))}</td>"
            + "".join(f"<td class='num'>{_fmt(v.get(c, 0))}</td>" for c in cols)
            + "</tr>"
            for k, v in strata.items()
            if isinstance(v, dict)
        )
        head = "".join(f"<th>{escape(c)}</th>" for c in cols)
        out += f"<p>Strata:</p><table><tr><th>stratum</th>{head}</tr>{body}</table>"
    out += "".join(_file_img(p, f"split: {p.stem}") for p in sorted((run / DATA_DIR / SPLIT_DIR).glob("*.png")))
    rows = [r for r in split.get("rows_to_read") or [] if isinstance(r, dict)][:5]
    if rows:
        body = "".join(
            f"<tr><td>{escape(str(r.get('val', '')))}</td><td>{escape(str(r.get('train', '')))}</td><td class='num'>{_fmt(r.get('similarity'))}</td></tr>"
            for r in rows
        )
        out += f"<p>Rows to read (validation row, its nearest train row):</p><table><tr><th>validation</th><th>nearest train</th><th>similarity</th></tr>{body}</table>"
    known = {"counts", "groups", "leakage", "strata", "rows_to_read", "nearest", "settings", "plot"}
    return out + _table({k: v for k, v in split.items() if k not in known})


def _plan(info: dict[str, Any]) -> str:
    plan = info.get("plan")
    if not plan:
        return _absent("plan", "run `tunesmith plan` or train with the plan stage")
    memory = plan.get("memory")
    out = _table(plan, skip=("memory",))
    if isinstance(memory, dict):
        gib = {k: f"{v / 2**30:.2f} GiB" for k, v in memory.items() if isinstance(v, (int, float))}
        out += "<p>Planned memory:</p>" + _table(gib)
    return out


def _training(info: dict[str, Any], run: Path) -> str:
    train, metrics = info.get("train"), info.get("metrics")
    if not train and not metrics:
        return _absent("training", "run `tunesmith train`")
    out = ""
    if train:
        best, minutes = train.get("best_step"), train.get("minutes")
        took = "" if minutes is None else f" ({_fmt(minutes)} min)"
        out += (
            f"<p>Best checkpoint: step {_fmt(best)} (validation loss {_fmt(train.get('best_val_loss'))}). "
            f"Stopped: {escape(str(train.get('why') or train.get('stop_reason')))} after {_fmt(train.get('steps'))} steps{took}.</p>"
        )
        notes = train.get("notes") or []
        if notes:
            out += "<ul>" + "".join(f"<li>{escape(str(n))}</li>" for n in notes) + "</ul>"
    if metrics:
        out += _img(loss_png(metrics, (train or {}).get("best_step")), "training and validation loss")
    else:
        out += _file_img(run / PLOTS_DIR / LOSS_PLOT, "training and validation loss")
    return out


def _examples(info: dict[str, Any]) -> str:
    tuned, base = info["eval_rows"].get("tuned") or [], info["eval_rows"].get("base") or []
    base_by_id = {str(r.get("id")): r for r in base}
    pairs = [(t, base_by_id.get(str(t.get("id")))) for t in tuned]
    # Rows where the two answers differ say the most; identical ones only if nothing else is left.
    pairs.sort(key=lambda p: p[1] is not None and p[0].get("output") == p[1].get("output"))
    out = []
    for t, b in pairs[:EXAMPLES]:
        prompt = t.get("prompt")
        question = (
            prompt
            if isinstance(prompt, str)
            else next((m.get("content") for m in reversed(prompt or []) if m.get("role") == "user"), "")
        )
        cols = "".join(
            f"<div><strong>{who}</strong><pre>{escape(str((r or {}).get('output', ''))[:_OUTPUT_CHARS])}</pre>"
            f"<small>{escape(json.dumps((r or {}).get('scores', {}), ensure_ascii=False)[:300])}</small></div>"
            for who, r in (("base", b), ("tuned", t))
        )
        ref = f"<p>Reference: <code>{escape(str(t.get('reference')))}</code></p>" if t.get("reference") else ""
        out.append(
            f"<h3>{escape(str(t.get('id')))}</h3><p>{escape(str(question))}</p>{ref}<div class='ex'>{cols}</div>"
        )
    return "".join(out)


def _evaluation(info: dict[str, Any]) -> str:
    ev = info.get("eval")
    if not ev:
        return _absent("evaluation", "run `tunesmith eval RUN_DIR`")
    rows = eval_metrics(info)
    models = ev.get("models") or {}
    unstopped = [(m, (models.get(m) or {}).get("unstopped")) for m in ("base", "tuned")]
    out = f"<p>Split <code>{escape(str(ev.get('split')))}</code>, {_fmt(ev.get('n'))} examples, suites: {escape(', '.join(ev.get('suites') or []))}.</p>"
    out += _metrics_table(rows) + _img(eval_png(rows), "base vs tuned")
    out += (
        "<p>Outputs that never stopped (hit max_new_tokens): "
        + ", ".join(f"{m} {_fmt(n)}" for m, n in unstopped if n is not None)
        + "</p>"
    )
    findings = ev.get("findings") or []
    if findings:
        out += (
            "<ul>"
            + "".join(
                f"<li>{escape(f.get('message', str(f)) if isinstance(f, dict) else str(f))}</li>" for f in findings
            )
            + "</ul>"
        )
    return out + "<h3>Example outputs</h3>" + _examples(info)


def _regression(info: dict[str, Any]) -> str:
    reg = (info.get("eval") or {}).get("regression")
    if not reg:
        return _absent("regression check", "eval.regression.enabled, on by default in `tunesmith eval`")
    return _table(reg) if isinstance(reg, dict) else f"<p>{_fmt(reg)}</p>"


def _judge(info: dict[str, Any]) -> str:
    models = (info.get("eval") or {}).get("models") or {}
    judged = {m: ((models.get(m) or {}).get("scores") or {}).get("judge") for m in ("base", "tuned")}
    judged = {m: s for m, s in judged.items() if s}
    if not judged:
        return _absent("judge results", "configure eval.judge and add `judge` to eval.suites")
    return "".join(f"<h3>{m}</h3>{_table(s)}" for m, s in judged.items())


def _blind(info: dict[str, Any]) -> str:
    blind = info.get("blind")
    if not blind:
        return _absent("blind review", "run `tunesmith compare RUN_DIR`, then `tunesmith review RUN_DIR`")
    if blind.get("pending"):
        return f"<p>The blind sheet has {blind['items']} items and no votes yet (`tunesmith review RUN_DIR`).</p>"

    def row(name: str, t: dict[str, Any]) -> str:
        rate = "" if t["win_rate"] is None else f"{t['win_rate']:.0%}"
        ci = "" if not t["ci95"] else f"{t['ci95'][0]:.0%}-{t['ci95'][1]:.0%}"
        return f"<tr><td>{escape(name)}</td><td class='num'>{t['wins']}</td><td class='num'>{t['losses']}</td><td class='num'>{t['ties']}</td><td class='num'>{t['skips']}</td><td class='num'>{rate}</td><td>{ci}</td></tr>"

    groups = [("all votes", blind["overall"])]
    groups += [(f"reviewer {r}", t) for r, t in sorted(blind["per_reviewer"].items())]
    groups += [(f"stratum {s}", t) for s, t in blind["per_stratum"].items()]
    out = f"<p>Tuned against {escape(str(blind['against']))}: {blind['items']} items, reviewers {escape(', '.join(blind['reviewers']))}.</p>"
    out += "<table><tr><th></th><th>tuned wins</th><th>losses</th><th>ties</th><th>skipped</th><th>win rate</th><th>95% CI</th></tr>"
    out += "".join(row(n, t) for n, t in groups) + "</table>"
    out += _img(
        win_rate_png([(n, t["win_rate"], tuple(t["ci95"])) for n, t in groups if t["ci95"]]), "blind review win rate"
    )
    for a in blind.get("reviewer_agreement") or []:
        if a["items"]:
            kappa = "n/a" if a["kappa"] is None else f"{a['kappa']:.2f}"
            out += f"<p>Agreement {escape(' / '.join(a['reviewers']))}: {a['agreement']:.0%} on {a['items']} items (Cohen's kappa {kappa}).</p>"
    j = blind.get("judge_agreement")
    if j:
        kappa = "n/a" if j["kappa"] is None else f"{j['kappa']:.2f}"
        out += f"<p>Agreement with the LLM judge: {j['agreement']:.0%} of {j['votes']} votes (kappa {kappa}).</p>"
    return out


def _config(info: dict[str, Any]) -> str:
    out = ""
    manifest = info.get("manifest")
    if manifest:
        for k in ("versions", "data", "hardware"):
            if isinstance(manifest.get(k), dict):
                out += f"<h3>{k}</h3>" + _table(manifest[k])
        out += f"<p>git {escape(str(manifest.get('git_sha')))} · started {escape(str(manifest.get('started')))}</p>"
    if info.get("config_text"):
        out += f"<h3>config.yaml</h3><pre>{escape(info['config_text'])}</pre>"
    return out or _absent("config or manifest", "written by `tunesmith train`")


def render_report(run_dir: str | Path) -> str:
    """The report as one HTML string."""
    run = Path(run_dir)
    info = collect(run)
    body = {
        "headline": _headline(info),
        "data": _data(info, run),
        "split": _split(info, run),
        "plan": _plan(info),
        "training": _training(info, run),
        "evaluation": _evaluation(info),
        "regression": _regression(info),
        "judge": _judge(info),
        "blind": _blind(info),
        "config": _config(info),
    }
    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title in SECTIONS[1:])
    sections = "".join(
        f'<section id="{sid}">{"" if sid == "headline" else f"<h2>{escape(title)}</h2>"}{body[sid]}</section>'
        for sid, title in SECTIONS
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
        f"<title>tunesmith report · {escape(info['run'])}</title><style>{_CSS}</style></head>"
        f"<body><main><nav>{nav}</nav>{sections}</main></body></html>\n"
    )


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write RUN_DIR/report.html (or `out`) atomically; returns its path."""
    path = Path(out) if out else Path(run_dir) / REPORT_FILE
    write_text(path, render_report(run_dir))
    return path
