"""`tunesmith review RUN_DIR`: a local page to vote on the blind sheet, one prompt at a time.

FastAPI + uvicorn rather than the standard library's http.server: both are already dependencies
(`serve` uses them), pydantic validates every vote body, the routes are an explicit allow-list (there
is no static-file handler at all, so no path can reach `key.json` or anything else on disk), and
tests drive the same app in-process through its TestClient. The page is one HTML file with its
script and styles inline (no CDN: it works offline), markdown rendered by a few lines of vendored
script over *escaped* text, and a Content-Security-Policy that lets only that script run, so an
output containing `<script>` is shown, never executed.

Safety: bound to 127.0.0.1 only; Host header checked (a web page elsewhere cannot reach the server
through DNS rebinding); votes for items not on the sheet are refused; the key is never read here.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tunesmith.compare.sheet import read_sheet
from tunesmith.compare.votes import VoteError, cast_vote, check_reviewer, load_votes
from tunesmith.config import CompareConfig

HOST = "127.0.0.1"
DEFAULT_PORT = CompareConfig().port
PAGE = "review.html"


class Vote(BaseModel):
    reviewer: str = Field(min_length=1, max_length=40)
    item: str = Field(min_length=1, max_length=20)
    choice: Literal["A", "B", "tie", "skip"]
    note: str = Field("", max_length=2000)


def _page(run_name: str) -> tuple[str, str]:
    """The page's HTML and its Content-Security-Policy (the inline script allowed by its hash)."""
    html = resources.files("tunesmith.compare").joinpath(PAGE).read_text(encoding="utf-8")
    html = html.replace("{{RUN}}", re.sub(r"[^\w.-]", "_", run_name))
    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)  # type: ignore[union-attr]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = (
        f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html, csp


def review_app(run_dir: str | Path):
    """The review server as an ASGI app (FastAPI); `serve_review` runs it."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    run_dir = Path(run_dir)
    sheet = read_sheet(run_dir)  # the key is not read: this process never holds it
    sheet_id = sheet[0]["sheet_id"] if sheet else ""
    items = {r["item"] for r in sheet}
    public = [{k: r[k] for k in ("item", "input", "output_a", "output_b")} for r in sheet]
    html, csp = _page(run_dir.resolve().name)
    headers = {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # the Swagger page loads from a CDN
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=[HOST, "localhost"])

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(html, headers=headers)

    @app.get("/api/sheet")
    def get_sheet() -> JSONResponse:
        return JSONResponse({"sheet_id": sheet_id, "run": run_dir.resolve().name, "items": public}, headers=headers)

    @app.get("/api/votes/{reviewer}")
    def get_votes(reviewer: str) -> JSONResponse:
        try:
            data = load_votes(run_dir, reviewer)
        except VoteError as e:
            raise HTTPException(422, str(e)) from None
        votes = {i: {"choice": v["choice"], "note": v.get("note", "")} for i, v in data["votes"].items() if i in items}
        return JSONResponse({"reviewer": check_reviewer(reviewer), "votes": votes}, headers=headers)

    @app.post("/api/vote")
    def post_vote(vote: Vote) -> JSONResponse:
        try:
            data = cast_vote(run_dir, vote.reviewer, vote.item, vote.choice, vote.note, items=items, sheet_id=sheet_id)
        except VoteError as e:
            raise HTTPException(404 if "unknown item" in str(e) else 422, str(e)) from None
        voted = sum(1 for i in data["votes"] if i in items)
        return JSONResponse({"ok": True, "voted": voted, "total": len(items)}, headers=headers)

    return app


def serve_review(run_dir: str | Path, port: int = DEFAULT_PORT) -> None:
    """Serve the review page on http://127.0.0.1:PORT until interrupted."""
    import uvicorn

    uvicorn.run(review_app(run_dir), host=HOST, port=port, log_level="warning")
