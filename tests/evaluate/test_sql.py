"""The sql suite: extraction, Spider-style comparison, and the sandbox against real attacks."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from tunesmith.config import EvalConfig, SqlSuiteConfig
from tunesmith.evaluate.suites import ScoreRow, get_suite
from tunesmith.evaluate.suites.sql import extract_sql, first_statement, results_match

REFERENCE = "SELECT name FROM t WHERE x > 1"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "dbs" / "shop.sqlite"
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE t (x INTEGER, name TEXT, price REAL);"
            "INSERT INTO t VALUES (1, 'a', 1.5), (2, 'b', 2.0), (3, 'c', 2.0), (3, 'c', 2.0);"
        )
    conn.close()
    return path


def _suite(db: Path | str | None = None, **sql) -> object:
    return get_suite("sql", EvalConfig(sql=SqlSuiteConfig(db=str(db) if db else None, **sql)))


def _score(suite, prediction: str, reference: str | None = REFERENCE, db: str | None = None) -> dict:
    return suite.score([ScoreRow(id="r", prompt="q", prediction=prediction, reference=reference, db=db)])[0]


def _fingerprint(path: Path) -> tuple[str, list[str]]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), sorted(os.listdir(path.parent))


def test_extract_sql_from_fence_prose_and_several_statements():
    assert extract_sql("Here you go:\n```sql\nSELECT 1;\n```\nThis counts rows.") == "SELECT 1"
    assert extract_sql("```\nSELECT 2\n```") == "SELECT 2"
    assert extract_sql("SELECT 'a;b' FROM t; DROP TABLE t;") == "SELECT 'a;b' FROM t"
    assert first_statement("SELECT 1 -- a ; comment\n, 2; DELETE FROM t") == "SELECT 1 -- a ; comment\n, 2"
    assert first_statement("SELECT $$;$$; DROP TABLE t") == "SELECT $$;$$"
    assert extract_sql("   ") == ""


def test_results_match_spider_rules():
    ref = [(1, "a"), (2, "b"), (2, "b")]
    assert results_match([("b", 2.0), ("a", 1), ("b", 2)], ref)  # columns permuted, rows reordered, 2 == 2.0
    assert not results_match([(1, "a"), (2, "b")], ref)  # multisets: a duplicate row matters
    assert not results_match([(2, "b"), (1, "a"), (2, "b")], ref, order_matters=True)
    assert results_match([(1, "a"), (2, "b"), (2, "b")], ref, order_matters=True)
    extra = [(1, "a", "x"), (2, "b", "y"), (2, "b", "z")]
    assert not results_match(extra, ref)
    assert results_match(extra, ref, lenient=True)  # defog's rule: superset of the columns
    assert not results_match([(1.0000001 + 0.01, "a"), (2, "b"), (2, "b")], ref)
    assert results_match([], [])
    assert results_match([(True,)], [(1,)])


def test_correct_wrong_and_failing_predictions(db: Path):
    suite = _suite(db)
    right = _score(suite, "```sql\nSELECT name FROM t WHERE x >= 2\n```")
    assert right["executed"] and right["correct"] and right["error_kind"] is None
    wrong = _score(suite, "SELECT name FROM t")
    assert wrong["executed"] and not wrong["correct"] and wrong["error_kind"] == "wrong_result"
    broken = _score(suite, "SELEC name FROM t")
    assert not broken["executed"] and broken["error_kind"] == "execution_error"
    assert _score(suite, "")["error_kind"] == "no_sql"
    assert _score(suite, "SELECT 1", reference="SELECT nope FROM t")["error_kind"] == "reference_failed"
    summary = suite.summarize([right, wrong, broken])
    assert summary["n"] == 3
    assert summary["execution_success_rate"] == pytest.approx(2 / 3)
    assert summary["execution_accuracy"] == pytest.approx(1 / 3)
    assert summary["errors"] == {"execution_error": 1, "wrong_result": 1}
    assert summary["mode"] == "strict"


def test_lenient_mode_accepts_extra_columns_and_says_so(db: Path):
    prediction = "SELECT name, x FROM t WHERE x > 1"
    assert not _score(_suite(db), prediction)["correct"]
    lenient = _suite(db, lenient=True)
    assert _score(lenient, prediction)["correct"]
    assert lenient.summarize([_score(lenient, prediction)])["mode"] == "lenient"


def test_order_matters_only_when_the_reference_sorts(db: Path):
    suite = _suite(db)
    assert _score(suite, "SELECT x FROM t ORDER BY x DESC", reference="SELECT x FROM t")["correct"]
    assert not _score(suite, "SELECT x FROM t ORDER BY x DESC", reference="SELECT x FROM t ORDER BY x")["correct"]


ATTACKS = {
    "drop": "DROP TABLE t",
    "update": "UPDATE t SET name = 'pwned'",
    "delete": "DELETE FROM t",
    "insert": "INSERT INTO t VALUES (9, 'z', 0)",
    "attach": "ATTACH DATABASE '{dir}/evil.sqlite' AS evil",
    "pragma_write": "PRAGMA journal_mode = WAL",
    "pragma_user_version": "PRAGMA user_version = 7",
    "vacuum_into": "VACUUM INTO '{dir}/copy.sqlite'",
    "vacuum": "VACUUM",
    "load_extension": "SELECT load_extension('/usr/lib/x86_64-linux-gnu/libsqlite3.so.0')",
    "create": "CREATE TABLE evil (x)",
    "transaction": "BEGIN IMMEDIATE",
    "fenced_drop": "```sql\nDROP TABLE t;\n```",
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_sqlite_attacks_leave_the_file_unchanged(db: Path, attack: str):
    before = _fingerprint(db)
    result = _score(_suite(db), ATTACKS[attack].format(dir=db.parent))
    assert not result["executed"] and not result["correct"]
    assert result["error_kind"] == "write_denied", result
    assert "sandbox" in result["error"]
    assert _fingerprint(db) == before  # same bytes, no new file beside it (evil.sqlite, copy.sqlite, -wal)


def test_a_second_statement_never_runs(db: Path):
    before = _fingerprint(db)
    result = _score(_suite(db), "SELECT name FROM t WHERE x > 1; DROP TABLE t;")
    assert result["correct"]
    assert _fingerprint(db) == before


def test_runaway_recursive_query_is_stopped(db: Path):
    suite = _suite(db, timeout_s=0.5)
    forever = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
    start = time.monotonic()
    result = _score(suite, forever)
    assert time.monotonic() - start < 3
    assert result["error_kind"] == "timeout"
    assert _score(suite, "SELECT name FROM t WHERE x > 1")["correct"]  # the connection still works afterwards


def test_row_cap(db: Path):
    result = _score(_suite(db, max_rows=3), "SELECT * FROM t")
    assert result["error_kind"] == "too_many_rows"


def test_db_dir_resolves_spider_and_flat_layouts(tmp_path: Path, db: Path):
    spider = tmp_path / "spider"
    (spider / "concert").mkdir(parents=True)
    (spider / "concert" / "concert.sqlite").write_bytes(db.read_bytes())
    (spider / "flat.sqlite").write_bytes(db.read_bytes())
    suite = _suite(db_dir=str(spider))
    assert _score(suite, "SELECT name FROM t WHERE x > 1", db="concert")["correct"]
    assert _score(suite, "SELECT name FROM t WHERE x > 1", db="flat")["correct"]
    missing = _score(suite, "SELECT 1", db="nowhere")
    assert missing["error_kind"] == "no_database" and "nowhere" in missing["error"]
    assert _score(_suite(), "SELECT 1")["error_kind"] == "no_database"


def test_chinook_fixture(shared_fixtures: Path):
    chinook = shared_fixtures / "sql" / "chinook.sqlite"
    before = hashlib.sha256(chinook.read_bytes()).hexdigest()
    suite = _suite(chinook)
    reference = "SELECT Name FROM Artist WHERE ArtistId <= 3"
    assert _score(suite, "SELECT a.Name FROM Artist a ORDER BY a.ArtistId LIMIT 3", reference=reference)["correct"]
    assert _score(suite, "DELETE FROM Artist", reference=reference)["error_kind"] == "write_denied"
    assert hashlib.sha256(chinook.read_bytes()).hexdigest() == before


# ---- PostgreSQL: a real server (.ci/run starts one) ----------------------------------------------------

POSTGRES_URL = os.environ.get("TUNESMITH_TEST_POSTGRES_URL")


@pytest.fixture
def pg_table():
    if not POSTGRES_URL:
        pytest.skip("no PostgreSQL server: set TUNESMITH_TEST_POSTGRES_URL (.ci/run starts one and sets it)")
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_URL)
    try:
        conn = engine.connect()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is not reachable: {e}")
    table = f"evalcore_{uuid.uuid4().hex[:8]}"
    with conn:
        conn.execute(text(f"CREATE TABLE {table} (x INTEGER, name TEXT, price NUMERIC(6,2))"))
        conn.execute(text(f"INSERT INTO {table} VALUES (1, 'a', 1.50), (2, 'b', 2.00), (3, 'c', 2.00)"))
        conn.commit()

    def state():
        with engine.connect() as c:
            return c.execute(text(f"SELECT x, name, price FROM {table} ORDER BY x")).fetchall()

    yield table, state
    with engine.connect() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        conn.commit()
    engine.dispose()


def test_postgres_scores_and_compares(pg_table):
    table, _ = pg_table
    suite = _suite(POSTGRES_URL)
    reference = f"SELECT name, price FROM {table} WHERE x > 1"
    assert _score(suite, f"SELECT price, name FROM {table} WHERE x >= 2", reference=reference)["correct"]
    assert _score(suite, f"SELECT nme FROM {table}", reference=reference)["error_kind"] == "execution_error"


@pytest.mark.parametrize(
    "attack",
    [
        "DROP TABLE {t}",
        "UPDATE {t} SET name = 'pwned'",
        "DELETE FROM {t}",
        "INSERT INTO {t} VALUES (9, 'z', 0)",
        "CREATE TABLE {t}_evil (x int)",
        "COMMIT; DROP TABLE {t}",
        "SELECT 1; SET default_transaction_read_only = off; DROP TABLE {t}",
    ],
)
def test_postgres_attacks_change_nothing(pg_table, attack: str):
    table, state = pg_table
    before = state()
    suite = _suite(POSTGRES_URL)
    # The suite takes the first statement; run the rest too, straight through the sandbox, to show
    # that the protocol refuses a smuggled second statement.
    result = _score(suite, attack.format(t=table), reference=f"SELECT x FROM {table}")
    box = suite._sandbox(POSTGRES_URL)
    try:
        whole = box.run(attack.format(t=table))
    finally:
        box.close()
    assert not result["executed"] or not result["correct"]
    assert not whole.ok and whole.error_kind in ("write_denied", "execution_error"), whole
    assert state() == before


def test_postgres_timeout(pg_table):
    table, _ = pg_table
    suite = _suite(POSTGRES_URL, timeout_s=0.5)
    start = time.monotonic()
    result = _score(suite, "SELECT pg_sleep(10)", reference=f"SELECT x FROM {table}")
    assert time.monotonic() - start < 5
    assert result["error_kind"] == "timeout"
