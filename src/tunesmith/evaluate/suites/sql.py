"""`sql`: does the generated query run, and does it return the right rows?

Per row: the SQL is taken from the output (a fenced ```sql block, else the whole text; the first
statement), run on the row's database, and its result compared with the reference query's result
the way Spider's test-suite evaluation compares them (`results_match`).

Generated SQL is untrusted, so it runs in a sandbox that leaves the database byte-for-byte
unchanged whatever the model writes:
- SQLite: opened read-only by URI, `PRAGMA query_only`, and an authorizer that allows only reading
  (SELECT, reads of columns, ordinary functions, recursive CTEs, a few schema-reading pragmas) and
  denies everything else: every write, ATTACH (which would create a file, and which VACUUM INTO
  needs), transactions, `load_extension`. Read-only mode alone is not enough: measured here,
  `VACUUM INTO 'copy.sqlite'` and `ATTACH 'new.sqlite'` both create files on a `mode=ro` connection.
  A progress handler stops a query after `timeout_s` (a recursive CTE that never ends), and at most
  `max_rows` rows are fetched.
- PostgreSQL (a `postgresql://` SQLAlchemy URL; other servers are untested): one statement only (extended protocol: `SELECT 1; COMMIT; DROP`
  is refused), sessions that default to read-only transactions, a read-only transaction with
  `statement_timeout`, always rolled back.

Summary keys: `n`, `execution_success_rate`, `execution_accuracy`, `errors` (counts by kind),
`mode` (`strict` or `lenient`).
"""

from __future__ import annotations

import itertools
import math
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from tunesmith.config import EvalConfig, SqlSuiteConfig
from tunesmith.evaluate.suites import ScoreRow, register

# Error kinds, the keys of the summary's `errors` counts.
NO_SQL = "no_sql"  # the output holds no query
NO_DATABASE = "no_database"  # no database configured or found for the row
WRITE_DENIED = "write_denied"  # the sandbox refused a write, ATTACH, PRAGMA, extension, ...
TIMEOUT = "timeout"
TOO_MANY_ROWS = "too_many_rows"
EXECUTION_ERROR = "execution_error"  # syntax errors, unknown tables or columns, ...
REFERENCE_FAILED = "reference_failed"  # the reference query itself does not run: a data problem
WRONG_RESULT = "wrong_result"  # ran, but returned other rows than the reference

_FENCE = re.compile(r"```[ \t]*(\w*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)


def extract_sql(text: str) -> str:
    """The query in a model's output: the first fenced block (```sql preferred), else the whole
    text; then its first statement, without the trailing semicolon."""
    blocks = _FENCE.findall(text or "")
    if blocks:
        sql_blocks = [body for lang, body in blocks if lang.lower() in ("sql", "sqlite", "postgresql", "postgres")]
        text = (sql_blocks or [blocks[0][1]])[0]
    return first_statement(text).strip()


def first_statement(sql: str) -> str:
    """Text up to the first `;` outside quotes, comments and dollar-quoted strings."""
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`[":
            close = "]" if c == "[" else c
            j = sql.find(close, i + 1)
            while j != -1 and close != "]" and j + 1 < n and sql[j + 1] == close:  # doubled quote escapes it
                j = sql.find(close, j + 2)
            i = n if j == -1 else j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j == -1 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j == -1 else j + 2
        elif c == "$" and (m := re.match(r"\$\w*\$", sql[i:])):
            j = sql.find(m.group(0), i + len(m.group(0)))
            i = n if j == -1 else j + len(m.group(0))
        elif c == ";":
            return sql[:i]
        else:
            i += 1
    return sql


# ---- comparing results (Spider test-suite evaluation) -------------------------------------------------


def normalize_value(value: Any) -> Any:
    """Values as Spider's test-suite compares them: 1 == 1.0 == True, floats to 6 decimals (the
    reference's ROUND and a prediction's missing ROUND still differ), Decimal as float."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, int | float):
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            return str(value)
        rounded = round(float(value), 6)
        return 0.0 if rounded == 0 else rounded
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def _key(value: Any) -> tuple[str, Any]:
    # Sort key for mixed-type columns (None, numbers and text together).
    return (type(value).__name__, value) if value is not None else ("", "")


def results_match(
    predicted: Sequence[Sequence[Any]],
    reference: Sequence[Sequence[Any]],
    *,
    order_matters: bool = False,
    lenient: bool = False,
) -> bool:
    """Spider's rule: the same rows as multisets (as lists when order matters), with the columns
    matched up to a permutation. `lenient`: the prediction may have extra columns (defog sql-eval's
    rule): some choice of its columns must match the reference's."""
    pred = [tuple(normalize_value(v) for v in row) for row in predicted]
    ref = [tuple(normalize_value(v) for v in row) for row in reference]
    if len(pred) != len(ref):
        return False
    if not ref:
        return True  # no rows on both sides: columns cannot be told apart
    n_ref, n_pred = len(ref[0]), len(pred[0])
    if n_pred < n_ref or (n_pred != n_ref and not lenient):
        return False
    # Candidate prediction columns for each reference column: same values as a multiset. This
    # prunes the permutations to (almost always) one.
    ref_cols = [sorted((r[j] for r in ref), key=_key) for j in range(n_ref)]
    pred_cols = [sorted((p[k] for p in pred), key=_key) for k in range(n_pred)]
    candidates = [[k for k in range(n_pred) if pred_cols[k] == ref_cols[j]] for j in range(n_ref)]
    if any(not c for c in candidates):
        return False
    for mapping in itertools.islice(itertools.product(*candidates), 10_000):
        if len(set(mapping)) != n_ref:
            continue
        projected = [tuple(p[k] for k in mapping) for p in pred]
        if order_matters:
            if projected == ref:
                return True
        elif Counter(projected) == Counter(ref):
            return True
    return False


def order_matters(reference_sql: str) -> bool:
    """Spider compares rows in order only when the reference query sorts them."""
    return bool(_ORDER_BY.search(reference_sql))


# ---- running queries in the sandbox -------------------------------------------------------------------


@dataclass
class Execution:
    rows: list[tuple[Any, ...]] | None
    error_kind: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None


class SandboxError(Exception):
    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


# Schema-reading pragmas a query may use; every other pragma (journal_mode=..., writable_schema=...) is denied.
_READ_PRAGMAS = frozenset({"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list"})
_DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})
_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})


def _authorizer(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_DENY if (arg2 or "").lower() in _DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA:
        return sqlite3.SQLITE_OK if (arg1 or "").lower() in _READ_PRAGMAS else sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_DENY


class SqliteSandbox:
    """A read-only connection to one SQLite file, reused for every query on it."""

    def __init__(self, path: str | Path, config: SqlSuiteConfig):
        self.path = Path(path)
        if not self.path.is_file():
            raise SandboxError(NO_DATABASE, f"{self.path}: no such SQLite file")
        self.config = config
        # mode=ro: the file is never opened for writing. Not immutable=1: that would skip locking
        # and could read a file another process is writing.
        self.conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        self.conn.execute("PRAGMA query_only = 1")  # belt and braces, set before the authorizer denies pragmas
        self.conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        self.conn.set_authorizer(_authorizer)
        self._deadline = math.inf
        # Called every 10k virtual-machine steps (~1 ms): returning True interrupts the query.
        self.conn.set_progress_handler(lambda: time.monotonic() > self._deadline, 10_000)

    def run(self, sql: str) -> Execution:
        self._deadline = time.monotonic() + self.config.timeout_s
        try:
            cursor = self.conn.execute(sql)
            rows = cursor.fetchmany(self.config.max_rows + 1)
        except sqlite3.DatabaseError as e:
            return Execution(None, *_sqlite_error(e, self.config.timeout_s))
        except (sqlite3.Warning, sqlite3.ProgrammingError, ValueError, OverflowError) as e:
            return Execution(None, EXECUTION_ERROR, str(e))
        finally:
            self._deadline = math.inf
            if self.conn.in_transaction:  # never true under the authorizer; kept as a guarantee
                self.conn.rollback()
        if len(rows) > self.config.max_rows:
            return Execution(None, TOO_MANY_ROWS, f"more than {self.config.max_rows} rows (sql.max_rows)")
        return Execution([tuple(r) for r in rows])

    def close(self) -> None:
        self.conn.close()


def _sqlite_error(e: sqlite3.DatabaseError, timeout_s: float) -> tuple[str, str]:
    message = str(e)
    if "interrupted" in message:
        return TIMEOUT, f"stopped after {timeout_s:g} s (sql.timeout_s)"
    if "authoriz" in message or "readonly" in message or "read-only" in message or "too many attached" in message:
        return WRITE_DENIED, f"refused by the read-only sandbox: {message}"
    return EXECUTION_ERROR, message


class ServerSandbox:
    """A SQLAlchemy database server (PostgreSQL): read-only transactions, statement_timeout, rollback."""

    def __init__(self, url: str, config: SqlSuiteConfig):
        from sqlalchemy import create_engine

        self.url, self.config = url, config
        timeout_ms = int(config.timeout_s * 1000)
        connect_args: dict[str, Any] = {}
        if url.startswith(("postgresql", "postgres")):
            # Every transaction of the session starts read-only, even one a smuggled COMMIT would open.
            connect_args["options"] = f"-c default_transaction_read_only=on -c statement_timeout={timeout_ms}"
        self.engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)

    def run(self, sql: str) -> Execution:
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                cursor.execute("SET TRANSACTION READ ONLY")
                cursor.execute(f"SET LOCAL statement_timeout = {int(self.config.timeout_s * 1000)}")
                # prepare=True: the extended query protocol, which runs exactly one statement.
                cursor.execute(sql, prepare=True) if _is_psycopg(cursor) else cursor.execute(sql)
                rows = cursor.fetchmany(self.config.max_rows + 1) if cursor.description is not None else []
            except Exception as e:  # noqa: BLE001 - every driver error is this prediction's failure
                return Execution(None, *_server_error(e, self.config.timeout_s))
            if len(rows) > self.config.max_rows:
                return Execution(None, TOO_MANY_ROWS, f"more than {self.config.max_rows} rows (sql.max_rows)")
            return Execution([tuple(r) for r in rows])
        finally:
            try:
                raw.rollback()
            finally:
                raw.close()

    def close(self) -> None:
        self.engine.dispose()


def _is_psycopg(cursor: Any) -> bool:
    """psycopg 3 takes `prepare=`; other DBAPI drivers run the statement as given."""
    import inspect

    try:
        return "prepare" in inspect.signature(cursor.execute).parameters
    except (TypeError, ValueError):
        return False


def _server_error(e: Exception, timeout_s: float) -> tuple[str, str]:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    lowered = message.lower()
    if "statement timeout" in lowered or "canceling statement" in lowered:
        return TIMEOUT, f"stopped after {timeout_s:g} s (sql.timeout_s)"
    if "read-only" in lowered or "cannot insert multiple commands" in lowered or "permission denied" in lowered:
        return WRITE_DENIED, f"refused by the read-only sandbox: {message}"
    return EXECUTION_ERROR, message


# ---- the suite ------------------------------------------------------------------------------------------


def resolve_database(row_db: str | None, config: SqlSuiteConfig) -> str | None:
    """Where a row's queries run: its `db` field under `db_dir` (DIR/<db>/<db>.sqlite, the Spider
    layout, or DIR/<db>.sqlite), or as a path/URL itself; else the suite's `db`."""
    if row_db:
        if config.db_dir:
            root = Path(config.db_dir)
            for candidate in (root / row_db / f"{row_db}.sqlite", root / f"{row_db}.sqlite", root / row_db):
                if candidate.is_file():
                    return str(candidate)
            return str(root / row_db / f"{row_db}.sqlite")  # reported as missing, with the expected path
        return row_db
    return config.db


def _is_url(db: str) -> bool:
    return "://" in db and not db.startswith("file:")


@register
class SqlSuite:
    name: ClassVar[str] = "sql"

    def __init__(self, config: EvalConfig):
        self.config = config.sql

    def _sandbox(self, db: str) -> SqliteSandbox | ServerSandbox:
        if _is_url(db):
            if db.startswith("sqlite:///"):
                return SqliteSandbox(db.removeprefix("sqlite:///"), self.config)
            return ServerSandbox(db, self.config)
        return SqliteSandbox(db, self.config)

    def score(self, rows: Sequence[ScoreRow]) -> list[dict[str, Any]]:
        sandboxes: dict[str, SqliteSandbox | ServerSandbox | SandboxError] = {}
        try:
            return [self._score_one(row, sandboxes) for row in rows]
        finally:
            for box in sandboxes.values():
                if not isinstance(box, SandboxError):
                    box.close()

    def _score_one(self, row: ScoreRow, sandboxes: dict[str, Any]) -> dict[str, Any]:
        sql = extract_sql(row.prediction)
        out: dict[str, Any] = {"sql": sql, "executed": False, "correct": False, "error_kind": None, "error": None}
        db = resolve_database(row.db, self.config)
        if not sql:
            return {**out, "error_kind": NO_SQL, "error": "the output holds no SQL"}
        if db is None:
            return {
                **out,
                "error_kind": NO_DATABASE,
                "error": "no database: set eval.sql.db (--db) or give rows a `db`",
            }
        if db not in sandboxes:
            try:
                sandboxes[db] = self._sandbox(db)
            except SandboxError as e:
                sandboxes[db] = e
            except Exception as e:  # noqa: BLE001 - a bad URL or unreachable server fails every row on it
                sandboxes[db] = SandboxError(NO_DATABASE, f"{db}: {e}")
        box = sandboxes[db]
        if isinstance(box, SandboxError):
            return {**out, "error_kind": box.kind, "error": str(box)}
        predicted = box.run(sql)
        if not predicted.ok:
            return {**out, "error_kind": predicted.error_kind, "error": predicted.error}
        out["executed"] = True
        if row.reference is None:
            return out  # execution only: nothing to compare with
        reference_sql = extract_sql(row.reference)
        expected = box.run(reference_sql)
        if not expected.ok:
            return {**out, "error_kind": REFERENCE_FAILED, "error": f"the reference query fails: {expected.error}"}
        correct = results_match(
            predicted.rows or [],
            expected.rows or [],
            order_matters=order_matters(reference_sql),
            lenient=self.config.lenient,
        )
        if not correct:
            return {**out, "error_kind": WRONG_RESULT, "error": "returns other rows than the reference"}
        return {**out, "correct": True}

    def summarize(self, scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
        n = len(scores)
        errors = Counter(s["error_kind"] for s in scores if s.get("error_kind"))
        return {
            "n": n,
            "execution_success_rate": sum(s["executed"] for s in scores) / n if n else None,
            "execution_accuracy": sum(s["correct"] for s in scores) / n if n else None,
            "errors": dict(sorted(errors.items())),
            "mode": "lenient" if self.config.lenient else "strict",
        }
