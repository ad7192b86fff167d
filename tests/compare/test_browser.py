"""The review page and the report in a real headless Chromium (Debian's, driven by Playwright).

No browser is downloaded: the tests use /usr/bin/chromium and skip, saying why, where it is absent.
Screenshots are saved as artefacts under pytest's tmp dir (see the `artefacts` fixture's path).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.compare.fixtures import make_run, running_server
from tunesmith.compare import build_sheet, unblind
from tunesmith.compare.sheet import read_key, read_sheet
from tunesmith.report import write_report
from tunesmith.runs import EVAL_DIR

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium); browser tests skipped")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def artefacts(tmp_path) -> Path:
    out = tmp_path / "screenshots"
    out.mkdir()
    return out


def _hostile_run(tmp_path: Path) -> Path:
    """A run whose first tuned output tries to run script in the page; the page must show it as text."""
    run = make_run(tmp_path / "run", n=6)
    path = run / EVAL_DIR / "tuned.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for r in rows:
        r["output"] += '\n\n<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_sheet(run, n=6, seed=11)
    return run


def test_vote_with_the_keyboard_reload_resume_and_unblind(browser, tmp_path, artefacts):
    # Waits go through locators (`expect`): the page's CSP forbids the string eval wait_for_function uses.
    from playwright.sync_api import expect

    run = _hostile_run(tmp_path)
    key = read_key(run)
    order = [r["item"] for r in read_sheet(run)]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    with running_server(run) as port:
        page.goto(f"http://127.0.0.1:{port}/")
        page.fill("#reviewer", "Ann")
        page.press("#reviewer", "Enter")
        page.wait_for_selector("#review:not(.hidden)")
        assert page.inner_text("#progress") == "0 / 6 voted"
        # Markdown rendered: the SQL fence became a code block, **bold** a <strong>.
        assert page.locator("#outA pre code, #outB pre code").count() >= 1
        assert page.locator("#outA strong, #outB strong").count() >= 1
        page.screenshot(path=str(artefacts / "review-first-item.png"))

        # Items 001-004: A, B, tie, skip. A note is typed first: typing "a" in it must not vote.
        page.keyboard.press("n")
        page.keyboard.type("a clear answer")
        assert page.inner_text("#progress") == "0 / 6 voted"
        page.keyboard.press("Escape")
        for k in ("a", "b", "t", "s"):
            page.keyboard.press(k)
            expect(page.locator("#progress")).to_have_text(f"{'abts'.index(k) + 1} / 6 voted")
        assert page.inner_text("#progress") == "4 / 6 voted"
        assert page.inner_text("#itemno").startswith(f"Item {order[4]}")

        page.reload()  # the name is remembered; the page resumes at the first item not voted yet
        page.wait_for_selector("#review:not(.hidden)")
        expect(page.locator("#progress")).to_have_text("4 / 6 voted")
        assert page.inner_text("#itemno").startswith(f"Item {order[4]}")
        page.keyboard.press("ArrowLeft")  # back to item 004 (skipped): the page shows the vote cast
        assert "your vote: skip" in page.inner_text("#status")
        page.keyboard.press("n")  # a note added after the vote is saved when the field loses focus
        page.keyboard.type("unsure")
        page.keyboard.press("Escape")
        expect(page.locator("#status")).to_have_text("your vote: skip (note saved)")
        page.keyboard.press("ArrowRight")
        page.keyboard.press("a")
        expect(page.locator("#progress")).to_have_text("5 / 6 voted")
        page.keyboard.press("b")
        expect(page.locator("#progress")).to_have_text("6 / 6 voted")
        assert page.is_visible("#done")
        page.screenshot(path=str(artefacts / "review-complete.png"))

        assert page.evaluate("window.pwned") is None, "an output's markup ran in the page"
        page.keyboard.press("ArrowLeft")
        assert "<script>window.pwned=2</script>" in page.inner_text("#outA") + page.inner_text("#outB")
    assert errors == []

    choices = dict(zip(order, ["A", "B", "tie", "skip", "A", "B"]))
    wins = sum(1 for i, c in choices.items() if c in "AB" and (key["items"][i]["A"] == "tuned") == (c == "A"))
    losses = sum(1 for c in choices.values() if c in ("A", "B")) - wins
    r = unblind(run)
    assert (r.overall.wins, r.overall.losses, r.overall.ties, r.overall.skips) == (wins, losses, 1, 1)
    assert r.reviewers == ["Ann"]
    votes = json.loads((run / "compare" / "votes" / "ann.json").read_text())
    assert votes["votes"][order[0]]["note"] == "a clear answer"
    assert votes["votes"][order[3]] | {"at": None} == {"choice": "skip", "note": "unsure", "at": None}


def test_report_in_the_browser(browser, tmp_path, artefacts):
    run = make_run(tmp_path / "run")
    path = write_report(run)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    page.goto(path.as_uri())
    page.screenshot(path=str(artefacts / "report-first-screen.png"))
    page.screenshot(path=str(artefacts / "report-full.png"), full_page=True)
    # The first screen holds the verdict: guard rails and the before/after table, above the fold.
    for sel in ("#guard-rails", "#headline table"):
        box = page.locator(sel).first.bounding_box()
        assert box is not None and box["y"] + box["height"] <= 900, sel
    for sid in ("data", "split", "plan", "training", "evaluation", "regression", "judge", "blind", "config"):
        assert page.locator(f"section#{sid} h2").is_visible(), sid
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == 4 and all(w > 100 for w in widths), widths
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
