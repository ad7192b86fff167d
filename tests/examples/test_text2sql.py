"""The built-in text-to-SQL example: a real database, queries that run, flaws exactly as planted."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from tunesmith.config import load_config
from tunesmith.data.schema import ROLES
from tunesmith.examples.text2sql import (
    CLEAN_MAX_JACCARD,
    CONVERSATIONS_FILE,
    DB_FILE,
    FLAW_KEY,
    HARD_NEGATIVE,
    NEAR_DUP_MIN_JACCARD,
    SCHEMA,
    generate_conversations,
    generate_database,
    jaccard,
    planned_flaws,
    shingles,
    write_conversations,
    write_example,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = REPO / "examples" / "text2sql"
N = 400  # big enough for every flaw kind and most templates, small enough for ~0.5 s


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_database(tmp_path_factory.mktemp("shop") / DB_FILE)


@pytest.fixture(scope="module")
def rows(db_path: Path) -> list:
    return generate_conversations(db_path, n=N, seed=0)


def is_ok(row: object) -> bool:
    """A row meant to pass every check: clean, or a hard negative."""
    return isinstance(row, dict) and row.get(FLAW_KEY) in (None, HARD_NEGATIVE)


def fold(row: dict) -> str:
    return "\x1e".join(f"{m['role']}\x1f{' '.join(m['content'].lower().split())}" for m in row["messages"])


def assert_queries_answer(db: sqlite3.Connection, rows: list) -> None:
    for row in rows:
        messages = row["messages"]
        assert messages[0] == {"role": "system", "content": messages[0]["content"]} and SCHEMA in messages[0]["content"]
        assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * ((len(messages) - 1) // 2), row["id"]
        for answer in (m["content"] for m in messages if m["role"] == "assistant"):
            assert sqlite3.complete_statement(answer) and answer.count(";") == 1 and answer.endswith(";"), answer
            result = db.execute(answer).fetchall()
            assert any(v not in (None, 0) for r in result for v in r), f"{row['id']}: {answer} returns nothing"


def test_database_is_deterministic_and_shaped_like_a_shop(tmp_path: Path, db_path: Path) -> None:
    again = generate_database(tmp_path / "again.sqlite", seed=0)
    other = generate_database(tmp_path / "other.sqlite", seed=1)
    dump = list(sqlite3.connect(db_path).iterdump())
    assert dump == list(sqlite3.connect(again).iterdump())
    assert dump != list(sqlite3.connect(other).iterdump())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left

    db = sqlite3.connect(db_path)
    count = {
        t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
        for t in ("customers", "products", "orders", "order_items")
    }
    assert 300 <= count["customers"] <= 1000 and 80 <= count["products"] <= 200
    assert count["order_items"] > count["orders"] >= 1000
    assert (
        db.execute(
            "SELECT COUNT(*) FROM order_items oi LEFT JOIN orders o ON o.id = oi.order_id WHERE o.id IS NULL"
        ).fetchone()[0]
        == 0
    )
    # Orders come after sign-up, dates are ISO, prices positive, and "never" questions have answers.
    assert (
        db.execute(
            "SELECT COUNT(*) FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.order_date < c.signup_date"
        ).fetchone()[0]
        == 0
    )
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", d) for (d,) in db.execute("SELECT order_date FROM orders"))
    assert db.execute("SELECT MIN(price) > 0, MIN(unit_price) > 0 FROM products, order_items").fetchone() == (1, 1)
    assert (
        db.execute("SELECT COUNT(*) FROM customers WHERE id NOT IN (SELECT customer_id FROM orders)").fetchone()[0] > 0
    )
    assert (
        db.execute("SELECT COUNT(*) FROM products WHERE id NOT IN (SELECT product_id FROM order_items)").fetchone()[0]
        > 0
    )
    assert db.execute("SELECT COUNT(*) FROM customers WHERE last_name LIKE '%''%'").fetchone()[0] > 0  # quoting matters


def test_conversations_are_deterministic(db_path: Path, rows: list) -> None:
    assert generate_conversations(db_path, n=N, seed=0) == rows
    assert generate_conversations(db_path, n=N, seed=1) != rows


def test_every_clean_query_runs_and_answers(db_path: Path, rows: list) -> None:
    assert_queries_answer(sqlite3.connect(db_path), [r for r in rows if is_ok(r)])


def test_flaw_counts_are_what_the_generator_says(rows: list) -> None:
    plan = planned_flaws(N)
    assert len(rows) == N
    assert sum(v for k, v in plan.items() if k != HARD_NEGATIVE) == round(N * 0.08)
    assert all(v >= 1 for v in plan.values())
    found = Counter(r.get(FLAW_KEY, "clean") if isinstance(r, dict) else "invalid_json" for r in rows)
    assert found.pop("clean") == N - sum(plan.values())
    assert dict(found) == plan


def test_each_flaw_is_the_flaw_it_claims(rows: list) -> None:
    position = {r["id"]: i for i, r in enumerate(rows) if isinstance(r, dict)}
    by_id = {r["id"]: r for r in rows if isinstance(r, dict)}
    for i, row in enumerate(rows):
        if isinstance(row, str):
            with pytest.raises(json.JSONDecodeError):
                json.loads(row)
            assert "\n" not in row
            continue
        flaw, messages = row.get(FLAW_KEY), row["messages"]
        roles = [m["role"] for m in messages]
        last = messages[-1]["content"]
        if flaw in ("exact_duplicate", "near_duplicate"):
            source = by_id[row["duplicate_of"]]
            assert position[source["id"]] < i and is_ok(source)
            assert messages != source["messages"]
            if flaw == "exact_duplicate":
                assert fold(row) == fold(source)
            else:
                assert fold(row) != fold(source)
                assert jaccard(shingles(messages), shingles(source["messages"])) >= NEAR_DUP_MIN_JACCARD
        elif flaw == "refusal":
            assert re.search(r"As an AI|I'm sorry, but|I apologize, but", last)
        elif flaw == "placeholder":
            assert re.search(r"\{\{.+?\}\}|<INSERT .+?>|\[Your Name\]", last)
        elif flaw == "empty_answer":
            assert roles[-1] == "assistant" and not last.strip()
        elif flaw == "answer_truncated":
            assert roles[-1] == "assistant" and len(last) > 10_000
        elif flaw == "no_assistant_message":
            assert "assistant" not in roles
        elif flaw == "last_not_assistant":
            assert roles[-1] == "user" and "assistant" in roles
        elif flaw == "unknown_role":
            assert set(roles) - set(ROLES)
        else:
            assert flaw in (None, HARD_NEGATIVE), flaw
            assert set(roles) <= set(ROLES) and roles[-1] == "assistant" and all(m["content"].strip() for m in messages)


def test_hard_negatives_look_flawed_but_are_not(db_path: Path, rows: list) -> None:
    hard = [r for r in rows if isinstance(r, dict) and r.get(FLAW_KEY) == HARD_NEGATIVE]
    assert len(hard) == planned_flaws(N)[HARD_NEGATIVE]
    assert_queries_answer(sqlite3.connect(db_path), hard)
    text = "\n".join(m["content"] for r in hard for m in r["messages"][1:])
    assert re.search(r"[Ss]orry|As an AI|can't|\{|\[name\]", text)


def test_clean_rows_are_neither_duplicates_nor_near_duplicates(rows: list) -> None:
    clean = [r for r in rows if is_ok(r)]
    assert len({fold(r) for r in clean}) == len(clean)
    by_template: dict[str, list] = {}
    for r in clean:
        by_template.setdefault(r["template"], []).append(shingles(r["messages"]))
    for name, grams in by_template.items():
        for i, a in enumerate(grams):
            assert all(jaccard(a, b) < CLEAN_MAX_JACCARD for b in grams[:i]), name


def test_variety(rows: list) -> None:
    clean = [r for r in rows if isinstance(r, dict) and FLAW_KEY not in r]
    templates = Counter(r["template"] for r in clean)
    assert len(templates) >= 40
    assert max(templates.values()) <= 0.06 * len(clean)  # no few templates dominate
    multi_turn = sum(len(r["messages"]) > 3 for r in clean)
    assert 0.08 * len(clean) <= multi_turn <= 0.25 * len(clean)
    assert len({r["messages"][1]["content"].lower() for r in clean}) >= 0.9 * len(clean)
    sql = "\n".join(m["content"] for r in clean for m in r["messages"] if m["role"] == "assistant")
    for feature in (
        "JOIN",
        "LEFT JOIN",
        "GROUP BY",
        "HAVING",
        "ORDER BY",
        "LIMIT",
        "COUNT(",
        "SUM(",
        "AVG(",
        "MAX(",
        "DISTINCT",
        "BETWEEN",
        "strftime",
        "(SELECT",
        "''",
    ):
        assert feature in sql, feature


def test_write_example_writes_both_files_atomically(tmp_path: Path) -> None:
    db_path, jsonl = write_example(tmp_path, n=120, seed=3)
    assert (db_path, jsonl) == (tmp_path / DB_FILE, tmp_path / CONVERSATIONS_FILE)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([DB_FILE, CONVERSATIONS_FILE])
    lines = jsonl.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 120
    assert lines == [
        r if isinstance(r, str) else json.dumps(r, ensure_ascii=False, separators=(",", ":"))
        for r in generate_conversations(db_path, n=120, seed=3)
    ]


def test_write_conversations_keeps_raw_lines_raw(tmp_path: Path) -> None:
    path = write_conversations(tmp_path / "x.jsonl", [{"messages": []}, '{"broken": '])
    assert path.read_text(encoding="utf-8") == '{"messages":[]}\n{"broken": \n'


def test_example_configs_validate_and_point_at_the_example() -> None:
    from tunesmith.models.builtin import BUILTIN_MODELS

    config = load_config(EXAMPLE_DIR / "config.yaml")
    assert config.model.name_or_path in BUILTIN_MODELS and config.train.method == "full"
    tiny = load_config(EXAMPLE_DIR / "config-tiny.yaml")
    assert tiny.model.name_or_path == "examples/text2sql/tiny-model"
    for c in (config, tiny):
        assert c.data.path == "examples/text2sql/conversations.jsonl"
        assert (REPO / c.data.path).is_file()
    assert config.run_dir != tiny.run_dir


@pytest.mark.slow
def test_committed_example_is_reproducible_and_every_clean_query_runs(tmp_path: Path) -> None:
    """The file in git is what the README's command writes, and all 3,000 rows hold up (~5 s)."""
    db_path = generate_database(tmp_path / DB_FILE)
    rows = generate_conversations(db_path)
    committed = (EXAMPLE_DIR / CONVERSATIONS_FILE).read_text(encoding="utf-8")
    assert write_conversations(tmp_path / CONVERSATIONS_FILE, rows).read_text(encoding="utf-8") == committed
    assert len(committed.encode()) < 3.5e6
    assert_queries_answer(sqlite3.connect(db_path), [r for r in rows if is_ok(r)])
    found = Counter(r.get(FLAW_KEY, "clean") if isinstance(r, dict) else "invalid_json" for r in rows)
    found.pop("clean")
    assert dict(found) == planned_flaws(3000)
