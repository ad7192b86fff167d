"""The review server's API and its safety: only its own routes, no key, no votes for unknown items."""

from __future__ import annotations

import contextlib
import re
import socket

import pytest

from tests.compare.fixtures import make_run, running_server
from tunesmith.compare import build_sheet, unblind
from tunesmith.compare.review import review_app
from tunesmith.compare.sheet import read_key
from tunesmith.runs import COMPARE_DIR, KEY_FILE


@pytest.fixture
def run(tmp_path):
    run = make_run(tmp_path / "run", n=6)
    build_sheet(run, n=6, seed=5)
    return run


@pytest.fixture
def client(run):
    from fastapi.testclient import TestClient

    return TestClient(review_app(run), base_url="http://127.0.0.1")


def test_sheet_and_votes_round_trip(client, run):
    sheet = client.get("/api/sheet").json()
    assert [i["item"] for i in sheet["items"]] == ["001", "002", "003", "004", "005", "006"]
    r = client.post("/api/vote", json={"reviewer": "ann", "item": "002", "choice": "tie", "note": "same"})
    assert r.status_code == 200 and r.json() == {"ok": True, "voted": 1, "total": 6}
    assert client.get("/api/votes/ann").json()["votes"] == {"002": {"choice": "tie", "note": "same"}}
    assert unblind(run).overall.ties == 1


def test_votes_for_unknown_items_and_bad_bodies_are_refused(client, run):
    assert client.post("/api/vote", json={"reviewer": "ann", "item": "999", "choice": "A"}).status_code == 404
    assert client.post("/api/vote", json={"reviewer": "ann", "item": "001", "choice": "C"}).status_code == 422
    assert client.post("/api/vote", json={"reviewer": "../key", "item": "001", "choice": "A"}).status_code == 422
    assert client.get("/api/votes/..%2F..%2Fkey").status_code in (404, 422)
    assert not (run / COMPARE_DIR / "votes").exists(), "a refused vote must leave nothing behind"


def test_the_key_is_never_served(client, run):
    key = read_key(run)
    bodies = [client.get(p).text for p in ("/", "/api/sheet", "/api/votes/ann")]
    client.post("/api/vote", json={"reviewer": "ann", "item": "001", "choice": "A"})
    bodies.append(client.get("/api/votes/ann").text)
    for body in bodies:
        # The fixture's outputs say "-- tuned" themselves; the key's labels are JSON strings of their own.
        assert re.search(r'"(tuned|other)"', body) is None and '"against"' not in body
        assert key["items"]["001"]["id"] not in body
    for path in ("/key.json", "/compare/key.json", "/docs", "/openapi.json", "/api/key", "/api/sheet/../../key.json"):
        assert client.get(path).status_code == 404, path


def test_foreign_host_header_is_refused(run):
    from fastapi.testclient import TestClient

    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example.
    assert TestClient(review_app(run), base_url="http://evil.example").get("/api/sheet").status_code == 400


def test_page_has_a_csp_that_admits_only_its_own_script(client):
    r = client.get("/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert "default-src 'none'" in csp and "<script src" not in r.text and "http" not in r.text.split("<script>")[1]


def _raw_get(port: int, target: str) -> tuple[int, bytes]:
    # A raw request: HTTP clients normalise "../" away before sending; an attacker's socket does not.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_path_traversal_against_the_real_server(run):
    key_bytes = (run / COMPARE_DIR / KEY_FILE).read_bytes()
    secret = read_key(run)["items"]["001"]["id"].encode()
    with running_server(run) as port:
        assert _raw_get(port, "/api/sheet")[0] == 200
        for target in (
            "/../compare/key.json",
            "/..%2Fcompare%2Fkey.json",
            "/%2e%2e/%2e%2e/compare/key.json",
            "/api/../../key.json",
            "/api/votes/..%2F..%2Fkey",
            "/compare/key.json",
            "//etc/passwd",
            "/static/..%2f..%2fkey.json",
        ):
            status, body = _raw_get(port, target)
            assert status in (400, 404, 422), (target, status)
            assert secret not in body and key_bytes not in body, target


def test_server_binds_loopback_only(run):
    with running_server(run) as port:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            outward = None
            with contextlib.suppress(OSError):
                s.connect(("192.0.2.1", 9))  # UDP connect sends nothing; it only picks the outward address
                outward = s.getsockname()[0]
        assert socket.create_connection(("127.0.0.1", port), timeout=2)
        if outward and not outward.startswith("127."):
            with pytest.raises(OSError):
                socket.create_connection((outward, port), timeout=1)
