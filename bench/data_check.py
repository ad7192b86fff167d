"""Benchmark: `data check` against plain `datasets.map` tokenization of the same file.

    .venv/bin/python bench/data_check.py                 # 100,000 conversations
    .venv/bin/python bench/data_check.py --n 20000       # a quick run
    .venv/bin/python bench/data_check.py --profile       # cProfile of check_file, top functions

`check_file` reads and validates every row, runs the quality gates, exact and near-duplicate
detection, renders every conversation with the chat template, tokenizes it with offsets, builds
the assistant-only labels and checks lengths and truncation. The baseline only reads the file and
runs `tokenizer.apply_chat_template(batch, tokenize=True)` in a batched `Dataset.map`: the least
any fine-tuning script does before step 1. Both run in this process, on the same file, with the
qwen2.5-instruct tokenizer from ../shared/fixtures; the target is check <= 1.5x baseline.

Peak RSS is measured per side in a fresh process that runs only that side (the kernel's RSS
high-water mark, reset after the tokenizer is loaded), so the two do not mask each other.

The data: text-to-SQL conversations with the example's real system prompt (the shop schema), a
question built from ~20 templates with random names, cities, products, dates and numbers, and
its SQL; 15% have a follow-up turn. About 3% are flawed the ways `data check` must catch
(exact and near duplicates, refusals, placeholders, empty answers, runaway answers, broken JSON).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunesmith.config import DataConfig  # noqa: E402
from tunesmith.data.check import check_file  # noqa: E402
from tunesmith.examples.text2sql import SYSTEM_PROMPT  # noqa: E402

TOKENIZER = ROOT.parent / "shared" / "fixtures" / "tokenizers" / "qwen2.5-instruct"
CACHE = Path(tempfile.gettempdir()) / "tunesmith-bench-data-check"

NAMES = "Emma Liam Olivia Noah Ava Lucas Sophia Mateo Mia Elias Amelia Leon Hugo Chloe Oliver Lea Jakob Sofia Felix Ines Arjun Priya Kenji Omar Layla Diego Lucia Marco Anna Piotr Lars Ingrid Sean Grace Wei Carlos Pierre Astrid".split()
SURNAMES = "Smith Garcia Miller Martin Dubois Muller Schmidt Rossi Lopez Silva Costa Jansen Nowak Larsen Hansen Murphy Kelly Walsh Taylor Tanaka Kim Nguyen Chen Patel Khan Cohen".split()
CITIES = "London Paris Lyon Berlin Munich Madrid Barcelona Rome Milan Amsterdam Lisbon Dublin Vienna Zurich Stockholm Oslo Warsaw Prague Toronto Sydney Chicago Austin".split()
CATEGORIES = "Electronics Books Kitchen Garden Sports Toys Clothing Beauty Office".split()
PRODUCTS = "Wireless Mouse|Mechanical Keyboard|USB-C Charger|Bluetooth Speaker|Chef's Knife|Cast Iron Skillet|French Press|Yoga Mat|Running Shoes|Rain Jacket|Wool Sweater|Desk Lamp|Fountain Pen|Garden Hose|Jigsaw Puzzle|Face Cream".split(
    "|"
)
STATUSES = "delivered shipped pending cancelled returned".split()
OPENERS = [
    "",
    "",
    "",
    "Please tell me: ",
    "Quick question: ",
    "I need to know ",
    "Can you find ",
    "For the monthly report, ",
    "Hi! ",
]

# (question, SQL) templates; {slots} are filled from the lists above. Every template has several
# wide slots (a full name, a date, a price), so rows repeat about as rarely as in real data.
TEMPLATES = [
    (
        "how many customers from {city} signed up between {month_name} {year} and {month_name2} {year2}?",
        "SELECT COUNT(*) FROM customers WHERE city = '{city}' AND signup_date BETWEEN '{year}-{month:02d}-01' AND '{year2}-{month2:02d}-28';",
    ),
    (
        "list the email addresses of customers from {city} who signed up in {month_name} {year}.",
        "SELECT email FROM customers WHERE city = '{city}' AND signup_date LIKE '{year}-{month:02d}-%' ORDER BY email;",
    ),
    (
        "what is the email of {first} {last} from {city}?",
        "SELECT email FROM customers WHERE first_name = '{first}' AND last_name = '{last}' AND city = '{city}';",
    ),
    (
        "which {cat} products cost between {price} and {price2} dollars?",
        "SELECT name, price FROM products WHERE category = '{cat}' AND price BETWEEN {price} AND {price2} ORDER BY price;",
    ),
    (
        "what is the average price of {cat} products with more than {stock} items in stock?",
        "SELECT ROUND(AVG(price), 2) FROM products WHERE category = '{cat}' AND stock > {stock};",
    ),
    (
        "show the {k} most expensive {cat} products under {price2} dollars with their stock.",
        "SELECT name, price, stock FROM products WHERE category = '{cat}' AND price < {price2} ORDER BY price DESC LIMIT {k};",
    ),
    (
        "how many orders were {status} between {month_name} {day} and {month_name2} {day2}, {year}?",
        "SELECT COUNT(*) FROM orders WHERE status = '{status}' AND order_date BETWEEN '{year}-{month:02d}-{day:02d}' AND '{year}-{month2:02d}-{day2:02d}';",
    ),
    (
        "what did {first} {last} spend in {year} on orders that were not cancelled?",
        "SELECT ROUND(SUM(oi.quantity * oi.unit_price), 2) FROM customers c JOIN orders o ON o.customer_id = c.id "
        "JOIN order_items oi ON oi.order_id = o.id WHERE c.first_name = '{first}' AND c.last_name = '{last}' "
        "AND o.status != 'cancelled' AND o.order_date LIKE '{year}-%';",
    ),
    (
        "which customers in {city} ordered the {product} in {month_name} {year}?",
        "SELECT DISTINCT c.first_name, c.last_name FROM customers c JOIN orders o ON o.customer_id = c.id JOIN order_items oi "
        "ON oi.order_id = o.id JOIN products p ON p.id = oi.product_id WHERE c.city = '{city}' AND p.name = '{product}' "
        "AND o.order_date LIKE '{year}-{month:02d}-%';",
    ),
    (
        "give me the revenue per category from {month_name} {year} to {month_name2} {year2}, highest first.",
        "SELECT p.category, ROUND(SUM(oi.quantity * oi.unit_price), 2) AS revenue FROM order_items oi JOIN products p ON "
        "p.id = oi.product_id JOIN orders o ON o.id = oi.order_id WHERE o.order_date BETWEEN '{year}-{month:02d}-01' AND "
        "'{year2}-{month2:02d}-28' GROUP BY p.category ORDER BY revenue DESC;",
    ),
    (
        "who are the top {k} customers in {city} by number of {status} orders since {month_name} {year}?",
        "SELECT c.first_name, c.last_name, COUNT(*) AS n FROM customers c JOIN orders o ON o.customer_id = c.id WHERE "
        "c.city = '{city}' AND o.status = '{status}' AND o.order_date >= '{year}-{month:02d}-01' GROUP BY c.id ORDER BY n DESC LIMIT {k};",
    ),
    (
        "how many units of {product} were sold to customers in {city} between {month_name} {year} and {month_name2} {year2}?",
        "SELECT SUM(oi.quantity) FROM order_items oi JOIN products p ON p.id = oi.product_id JOIN orders o ON o.id = "
        "oi.order_id JOIN customers c ON c.id = o.customer_id WHERE p.name = '{product}' AND c.city = '{city}' AND "
        "o.order_date BETWEEN '{year}-{month:02d}-01' AND '{year2}-{month2:02d}-28';",
    ),
    (
        "which {cat} products priced over {price} dollars have fewer than {stock} items in stock?",
        "SELECT name, price, stock FROM products WHERE category = '{cat}' AND price > {price} AND stock < {stock} ORDER BY stock;",
    ),
    (
        "list the {status} orders of {first} {last} since {month_name} {day}, {year}, newest first.",
        "SELECT o.id, o.order_date FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.first_name = "
        "'{first}' AND c.last_name = '{last}' AND o.status = '{status}' AND o.order_date >= '{year}-{month:02d}-{day:02d}' "
        "ORDER BY o.order_date DESC;",
    ),
]
FOLLOWUPS = [
    ("Only the first {k}, please.", " LIMIT {k};"),
    ("Now sort them the other way round.", " -- reversed\n"),
    ("And exclude anything from {city}.", " -- excluding {city}\n"),
]
MONTHS = "January February March April May June July August September October November December".split()


def _slots(rng: random.Random) -> dict:
    month, month2 = rng.randint(1, 12), rng.randint(1, 12)
    price = rng.randint(5, 300)
    year = rng.randint(2019, 2024)
    return {
        "city": rng.choice(CITIES),
        "year": year,
        "year2": rng.randint(year, 2025),
        "first": rng.choice(NAMES),
        "last": rng.choice(SURNAMES),
        "cat": rng.choice(CATEGORIES),
        "price": price,
        "price2": price + rng.randint(5, 200),
        "k": rng.randint(2, 25),
        "stock": rng.randint(1, 200),
        "status": rng.choice(STATUSES),
        "month": month,
        "month2": month2,
        "month_name": MONTHS[month - 1],
        "month_name2": MONTHS[month2 - 1],
        "product": rng.choice(PRODUCTS),
        "day": rng.randint(1, 28),
        "day2": rng.randint(1, 28),
    }


def _conversation(rng: random.Random) -> list[dict[str, str]]:
    q, a = rng.choice(TEMPLATES)
    s = _slots(rng)
    question = rng.choice(OPENERS) + q.format(**s)
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": question[0].upper() + question[1:]},
    ]
    messages.append({"role": "assistant", "content": a.format(**s)})
    if rng.random() < 0.15:
        fq, fa = rng.choice(FOLLOWUPS)
        messages += [
            {"role": "user", "content": fq.format(**s)},
            {"role": "assistant", "content": a.format(**s).rstrip(";") + fa.format(**s)},
        ]
    return messages


def _flaw(messages: list[dict[str, str]], kind: str, rows: list, rng: random.Random) -> dict | str:
    m = [dict(x) for x in messages]
    if kind == "exact" and rows:
        copy = json.loads(json.dumps(rng.choice(rows[-500:])))
        copy["messages"][1]["content"] = copy["messages"][1]["content"].upper()
        return copy
    if kind == "near" and rows:
        copy = json.loads(json.dumps(rng.choice(rows[-500:])))
        copy["messages"][1]["content"] = "So, " + copy["messages"][1]["content"]
        return copy
    if kind == "refusal":
        m[-1]["content"] = "I'm sorry, but I can't access your database."
    elif kind == "placeholder":
        m[-1]["content"] = "SELECT * FROM {{table_name}};"
    elif kind == "empty":
        m[-1]["content"] = " "
    elif kind == "runaway":
        m[-1]["content"] = "\n".join([m[-1]["content"]] * 60)
    elif kind == "broken":
        return json.dumps({"messages": m})[:-3]
    return {"messages": m}


def generate(n: int, seed: int = 0) -> list[dict | str]:
    """`n` rows: dicts in messages form, or the raw text of a broken line."""
    rng = random.Random(seed)
    kinds = (
        ["exact"] * 10 + ["near"] * 8 + ["refusal"] * 4 + ["placeholder"] * 3 + ["empty"] * 2 + ["runaway", "broken"]
    )
    rows: list[dict | str] = []
    for _ in range(n):
        messages = _conversation(rng)
        rows.append(
            _flaw(messages, rng.choice(kinds), [r for r in rows[-500:] if isinstance(r, dict)], rng)
            if rng.random() < 0.03
            else {"messages": messages}
        )
    return rows


def data_file(n: int) -> Path:
    path = CACHE / f"conversations-{n}.jsonl"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in generate(n)),
            encoding="utf-8",
        )
        tmp.replace(path)
    return path


def run_check(path: Path, tokenizer, max_seq_len: int):
    return check_file(path, config=DataConfig(max_seq_len=max_seq_len), tokenizer=tokenizer)


def run_baseline(path: Path, tokenizer):
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rows.append({"messages": json.loads(line)["messages"]})
            except (ValueError, KeyError, TypeError):
                continue  # a script that skips what it cannot read
    ds = Dataset.from_list(rows)
    return ds.map(
        lambda b: {"input_ids": tokenizer.apply_chat_template(b["messages"], tokenize=True)["input_ids"]},
        batched=True,
        batch_size=1000,
        remove_columns=["messages"],
        keep_in_memory=True,
    )


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss(phase: str, n: int, max_seq_len: int) -> tuple[float, float]:
    """(RSS before the phase, peak RSS during it) in MiB, from a fresh process that loads the
    tokenizer and runs only that phase."""
    out = subprocess.run(
        [sys.executable, __file__, "--n", str(n), "--max-seq-len", str(max_seq_len), "--phase", phase],
        capture_output=True,
        text=True,
        check=True,
    )
    before, peak = json.loads(out.stdout.strip().splitlines()[-1])
    return before, peak


def _peak_since_reset_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # KiB


def _run_phase(phase: str, n: int, max_seq_len: int) -> None:
    from tunesmith.data.template import load_tokenizer

    tokenizer = load_tokenizer(TOKENIZER)
    path = data_file(n)
    before = _rss_mib()
    # Loading a 150k-token tokenizer peaks above what it keeps: reset the high-water mark (Linux
    # >= 4.0) so the peak is this phase's. Without /proc, ru_maxrss covers the whole process.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        peak = _peak_since_reset_mib
    except OSError:
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731
    run_check(path, tokenizer, max_seq_len) if phase == "check" else run_baseline(path, tokenizer)
    print(json.dumps([before, peak()]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--n", type=int, default=100_000, help="conversations to generate (cached in %(default)s's tmp dir)"
    )
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=1, help="time each side this many times, keep the best")
    parser.add_argument("--profile", action="store_true", help="print the top functions of check_file")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS runs (one fresh process per side)")
    parser.add_argument(
        "--phase", choices=["check", "baseline"], help=argparse.SUPPRESS
    )  # internal: one side, for its RSS
    args = parser.parse_args()
    if args.phase:
        return _run_phase(args.phase, args.n, args.max_seq_len)

    from tunesmith.data.template import load_tokenizer

    tokenizer = load_tokenizer(TOKENIZER)
    t = time.perf_counter()
    path = data_file(args.n)
    print(
        f"data: {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.n} rows; ready in {time.perf_counter() - t:.1f}s)"
    )
    print(f"threads: RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'default')}, cpus={os.cpu_count()}")

    check_times, base_times = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        ds = run_baseline(path, tokenizer)
        base_times.append(time.perf_counter() - t)
        base_tokens = sum(map(len, ds["input_ids"]))
        t = time.perf_counter()
        report = run_check(path, tokenizer, args.max_seq_len)
        check_times.append(time.perf_counter() - t)
    check_s, base_s = min(check_times), min(base_times)
    print(
        f"baseline (read + Dataset.from_list + map(apply_chat_template)): {base_s:.2f}s, {len(ds)} rows, {base_tokens} tokens"
    )
    print(
        f"check_file (read, validate, gates, exact+near dup, template+masks, lengths): {check_s:.2f}s, "
        f"{report.stats.get('encoded_rows')} rows encoded, {report.stats.get('tokens', {}).get('total')} tokens"
    )
    print(f"ratio check / baseline: {check_s / base_s:.2f}x (target <= 1.5x)")
    print(f"findings: {dict(list(report.counts.items())[:8])}")
    if not args.no_memory:
        for phase in ("baseline", "check"):
            before, peak = peak_rss(phase, args.n, args.max_seq_len)
            print(
                f"peak RSS, {phase} alone in a fresh process: {peak:.0f} MiB ({peak - before:+.0f} MiB over the {before:.0f} MiB after loading the tokenizer)"
            )
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(run_check, path, tokenizer, args.max_seq_len)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
