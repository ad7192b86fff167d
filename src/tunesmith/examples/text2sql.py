"""The built-in example: a text-to-SQL assistant for a small shop's SQLite database.

Everything is generated from a seed, so the demo, the tests and the benchmarks need no download:

* `generate_database` writes the shop (customers, products, orders, order_items) to a file;
* `generate_conversations` writes OpenAI `messages` rows: a system prompt holding the schema, a
  question, and one SQL query as the answer. Values are drawn from the database and every clean
  query is executed while generating: one that fails or returns nothing is drawn again, so each
  clean answer is a query that runs and answers something;
* a share of the rows (`flaw_rate`) is broken on purpose, in the ways the data stage must catch,
  and tagged `"flaw": "<finding code>"` (clean rows carry no `flaw`). A few correct rows that a
  careless checker would flag are tagged `"flaw": "none-hard-negative"`.

Every row has an `id` and the name of the question `template` it came from (metadata: never trained
on, useful for grouping in splits); duplicates say which row they copy in `duplicate_of`.
"""

from __future__ import annotations

import calendar
import functools
import json
import os
import random
import re
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from tunesmith.runs import atomic_open

DB_FILE = "shop.sqlite"
CONVERSATIONS_FILE = "conversations.jsonl"
FLAW_KEY = "flaw"
HARD_NEGATIVE = "none-hard-negative"

# Share of each flaw among the flawed rows (sums to 1). The codes are the data stage's finding codes.
FLAW_SHARES: dict[str, float] = {
    "exact_duplicate": 0.22,
    "near_duplicate": 0.15,
    "refusal": 0.14,
    "placeholder": 0.13,
    "empty_answer": 0.08,
    "last_not_assistant": 0.07,
    "no_assistant_message": 0.06,
    "unknown_role": 0.06,
    "invalid_json": 0.05,
    "answer_truncated": 0.04,  # an answer of thousands of tokens: cut by any max_seq_len near 1024
}
HARD_NEGATIVE_RATE = 0.004
# Word 3-gram Jaccard of the non-system text, as the data stage's near-duplicate check measures it.
# Both sides keep clear of the 0.85 default threshold, because MinHash only estimates it (128
# slots: std ~0.04) and LSH banding misses some pairs near it: clean rows of one template stay
# below CLEAN_MAX_JACCARD, a planted near duplicate reaches NEAR_DUP_MIN_JACCARD with its source.
CLEAN_MAX_JACCARD = 0.7
NEAR_DUP_MIN_JACCARD = 0.95

# Only keys as constraints: the schema is in every row's system prompt, and tokens (and bytes) cost.
SCHEMA = (
    "CREATE TABLE customers (id INTEGER PRIMARY KEY, first_name TEXT, last_name TEXT, email TEXT, city TEXT, "
    "country TEXT, signup_date TEXT);\n"
    "CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, category TEXT, price REAL, stock INTEGER);\n"
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers, order_date TEXT, "
    "status TEXT);\n"
    "CREATE TABLE order_items (id INTEGER PRIMARY KEY, order_id INTEGER REFERENCES orders, "
    "product_id INTEGER REFERENCES products, quantity INTEGER, unit_price REAL);"
)
_INDEXES = (
    "CREATE INDEX orders_customer ON orders(customer_id);"
    "CREATE INDEX items_order ON order_items(order_id);"
    "CREATE INDEX items_product ON order_items(product_id);"
    "CREATE INDEX customers_name ON customers(last_name, first_name);"
    "CREATE INDEX orders_date ON orders(order_date);"
)
STATUSES = ("delivered", "shipped", "pending", "cancelled", "returned")
SYSTEM_PROMPT = (
    "Write one SQLite query that answers the question, and nothing else.\n\n"
    f"Schema:\n{SCHEMA}\n"
    "Dates are 'YYYY-MM-DD' text. orders.status: " + ", ".join(STATUSES) + "."
)

# ---------------------------------------------------------------------------------------------
# The database

_FIRST = (
    "Emma Liam Olivia Noah Ava Lucas Sophia Mateo Mia Elias Amelia Leon Isabella Hugo Charlotte Luca Chloe "
    "Oliver Lea Jakob Sofia Felix Ines Tomas Freya Arjun Priya Kenji Yuki Omar Layla Diego Lucia Marco Giulia "
    "Anna Jan Eva Piotr Zofia Lars Ingrid Sean Aoife Ryan Grace Ethan Hannah Daniel Sara Mohammed Fatima "
    "Wei Mei Carlos Ana Pierre Camille Nils Astrid"
).split()
_LAST = (
    (
        "Smith Johnson Brown Garcia Miller Davis Martin Bernard Dubois Muller Schmidt Schneider Fischer Rossi "
        "Russo Bianchi Fernandez Lopez Martinez Silva Santos Costa Jansen De_Vries Bakker Nowak Kowalski "
        "Novak Svoboda Larsen Hansen Nielsen Johansson Andersson Murphy Kelly O'Brien O'Connor Walsh Taylor "
        "Wilson Evans Thomas Roberts Tanaka Sato Kim Nguyen Chen Wang Patel Shah Khan Ali Cohen Levi"
    )
    .replace("_", " ")
    .split()
)
_CITIES = {  # city: (country, weight): a few big cities, a long tail
    "London": ("United Kingdom", 9),
    "Manchester": ("United Kingdom", 3),
    "Edinburgh": ("United Kingdom", 2),
    "Paris": ("France", 8),
    "Lyon": ("France", 3),
    "Marseille": ("France", 2),
    "Berlin": ("Germany", 7),
    "Munich": ("Germany", 4),
    "Hamburg": ("Germany", 3),
    "Madrid": ("Spain", 5),
    "Barcelona": ("Spain", 5),
    "Valencia": ("Spain", 2),
    "Rome": ("Italy", 4),
    "Milan": ("Italy", 4),
    "Amsterdam": ("Netherlands", 5),
    "Rotterdam": ("Netherlands", 2),
    "Lisbon": ("Portugal", 3),
    "Porto": ("Portugal", 2),
    "Dublin": ("Ireland", 3),
    "Vienna": ("Austria", 3),
    "Zurich": ("Switzerland", 2),
    "Stockholm": ("Sweden", 3),
    "Oslo": ("Norway", 2),
    "Copenhagen": ("Denmark", 2),
    "Warsaw": ("Poland", 3),
    "Prague": ("Czech Republic", 2),
    "New York": ("United States", 6),
    "Chicago": ("United States", 3),
    "Austin": ("United States", 2),
    "Toronto": ("Canada", 3),
    "Montréal": ("Canada", 2),
    "Sydney": ("Australia", 2),
    "São Paulo": ("Brazil", 2),
}
_PRODUCTS = {  # category: (price range in dollars, items)
    "Electronics": (
        (9, 450),
        "Wireless Mouse|Mechanical Keyboard|USB-C Charger|Bluetooth Speaker|Noise-Cancelling Headphones|27-inch Monitor|HD Webcam|External SSD 1TB|Smartwatch|Power Bank|HDMI Cable|Wi-Fi Router|E-Reader",
    ),
    "Books": (
        (8, 45),
        "Learning SQL|The Silent Harbor|A Brief History of Maps|Cooking for Two|The Data Detective|Mountains of Dawn|Python Crash Course|The Last Lighthouse|Gardening Basics|Stars Over Lisbon|The Patient Investor|Tales of the North",
    ),
    "Kitchen": (
        (5, 400),
        "Chef's Knife|Cast Iron Skillet|French Press|Electric Kettle|Bamboo Cutting Board|Blender|Toaster|Measuring Cups|Espresso Machine|Salad Spinner|Non-Stick Pan|Spice Rack",
    ),
    "Garden": (
        (6, 350),
        "Garden Hose|Pruning Shears|Watering Can|Seed Starter Kit|Raised Garden Bed|Lawn Mower|Wheelbarrow|Bird Feeder|Solar Garden Lights|Compost Bin|Hedge Trimmer",
    ),
    "Sports": (
        (7, 220),
        "Yoga Mat|Dumbbell Set|Running Shoes|Tennis Racket|Cycling Helmet|Jump Rope|Football|Water Bottle|Resistance Bands|Hiking Backpack|Swim Goggles|Foam Roller",
    ),
    "Toys": (
        (6, 120),
        "Building Blocks|Jigsaw Puzzle 1000 Pieces|Plush Bear|Remote Control Car|Board Game Classic|Kite|Wooden Train Set|Art Easel|Toy Kitchen|Marble Run",
    ),
    "Clothing": (
        (9, 180),
        "Rain Jacket|Wool Sweater|Denim Jeans|Cotton T-Shirt|Linen Shirt|Winter Scarf|Knit Beanie|Leather Belt|Hoodie|Trail Socks|Summer Dress",
    ),
    "Beauty": (
        (4, 90),
        "Face Cream|Argan Shampoo|Lip Balm|Sunscreen SPF 50|Hair Dryer|Hand Soap|Body Lotion|Nail Polish Set|Beard Oil|Eye Serum",
    ),
    "Office": (
        (2, 350),
        "Notebook A5|Fountain Pen|Desk Lamp|Stapler|Ergonomic Chair|Sticky Notes|Monitor Stand|Paper Shredder|Whiteboard|Desk Organizer|Label Maker",
    ),
}
N_CUSTOMERS, N_ORDERS = 400, 2000
FIRST_ORDER_DAY, LAST_ORDER_DAY = date(2022, 1, 1), date(2024, 12, 31)


def _day(rng: random.Random, start: date, end: date) -> str:
    return (start + timedelta(days=rng.randrange((end - start).days + 1))).isoformat()


def _shop_rows(rng: random.Random) -> dict[str, list[tuple[Any, ...]]]:
    customers, emails = [], set()
    cities = list(_CITIES)
    for cid in range(1, N_CUSTOMERS + 1):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        city = rng.choices(cities, weights=[w for _, w in _CITIES.values()])[0]
        local = re.sub(r"[^a-z.]", "", f"{first}.{last}".lower())
        domain = rng.choice(("example.com", "mail.test", "shopper.dev"))
        email, k = f"{local}@{domain}", 1
        while email in emails:  # namesakes get a number, as mail providers do
            k += 1
            email = f"{local}{k}@{domain}"
        emails.add(email)
        customers.append(
            (cid, first, last, email, city, _CITIES[city][0], _day(rng, date(2021, 1, 1), date(2024, 6, 30)))
        )
    products, pid = [], 0
    for category, ((lo, hi), items) in _PRODUCTS.items():
        for name in items.split("|"):
            pid += 1
            stock = 0 if rng.random() < 0.06 else rng.randrange(1, 500)
            price = int(rng.uniform(lo, hi)) + rng.choice((0.99, 0.49, 0.0))  # shop prices: 24.99, 120.0
            products.append((pid, name, category, price, stock))
    # About one customer in ten never orders and a few products never sell: "never" questions have answers.
    buyers = [c for c in customers if rng.random() > 0.1]
    sold = [p for p in products if rng.random() > 0.05]
    orders, items = [], []
    for oid in range(1, N_ORDERS + 1):
        cust = rng.choice(buyers)
        start = max(date.fromisoformat(cust[6]), FIRST_ORDER_DAY)
        status = rng.choices(STATUSES, weights=(60, 15, 10, 10, 5))[0]
        orders.append((oid, cust[0], _day(rng, start, LAST_ORDER_DAY), status))
        for prod in rng.sample(sold, rng.choice((1, 1, 2, 2, 3, 4))):
            price = prod[3] if rng.random() > 0.15 else round(prod[3] * 0.9, 2)  # sometimes on sale
            items.append((len(items) + 1, oid, prod[0], rng.choices((1, 2, 3, 5), weights=(70, 20, 7, 3))[0], price))
    return {"customers": customers, "products": products, "orders": orders, "order_items": items}


def generate_database(path: str | Path, seed: int = 0) -> Path:
    """Write the shop database to `path` (replaced atomically): same seed, same rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tables = _shop_rows(random.Random(seed))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with sqlite3.connect(tmp) as db:
            db.executescript(SCHEMA + _INDEXES)
            for table, rows in tables.items():
                db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
        db.close()
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


# The name `tunesmith.demo` calls it by.
write_database = generate_database


# ---------------------------------------------------------------------------------------------
# Question templates: each draws values from the database and returns the turns (question, SQL).

Turns = list[tuple[str, str]]


@dataclass
class _Facts:
    """What the templates may ask about: values that exist in the database."""

    cities: list[str]
    countries: list[str]
    categories: list[str]
    products: list[str]
    buyers: list[tuple[str, str]]  # (first, last) of customers with at least one order
    order_ids: list[int]

    @classmethod
    def read(cls, db: sqlite3.Connection) -> _Facts:
        def col(sql: str) -> list[Any]:
            return [r[0] for r in db.execute(sql)]

        return cls(
            cities=col("SELECT DISTINCT city FROM customers ORDER BY city"),
            countries=col("SELECT DISTINCT country FROM customers ORDER BY country"),
            categories=col("SELECT DISTINCT category FROM products ORDER BY category"),
            products=col("SELECT name FROM products WHERE id IN (SELECT product_id FROM order_items) ORDER BY id"),
            buyers=list(
                db.execute(
                    "SELECT DISTINCT c.first_name, c.last_name FROM customers c JOIN orders o ON o.customer_id = c.id ORDER BY c.id"
                )
            ),
            order_ids=col("SELECT id FROM orders ORDER BY id"),
        )


class _Draw:
    """A template's source of values: the random generator plus the facts."""

    def __init__(self, rng: random.Random, facts: _Facts):
        self.rng, self.f = rng, facts

    def one(self, *options: Any) -> Any:
        return self.rng.choice(options)

    def year(self) -> int:
        return self.rng.randint(FIRST_ORDER_DAY.year, LAST_ORDER_DAY.year)

    def month(self) -> tuple[int, int, str]:
        """(year, month, "March 2023")."""
        y, m = self.year(), self.rng.randint(1, 12)
        return y, m, f"{calendar.month_name[m]} {y}"


def _q(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _in_month(column: str, y: int, m: int) -> str:
    """`column` falls in month m of year y (half-open: no month-length arithmetic in the query)."""
    nxt = f"{y + 1}-01-01" if m == 12 else f"{y}-{m + 1:02d}-01"
    return f"{column} >= '{y}-{m:02d}-01' AND {column} < '{nxt}'"


_REVENUE = "ROUND(SUM(oi.quantity * oi.unit_price), 2)"
_ITEMS_ORDERS = "FROM order_items oi JOIN orders o ON o.id = oi.order_id"
_TEMPLATES: dict[str, Callable[[_Draw], Turns]] = {}
_HARD_NEGATIVES: dict[str, Callable[[_Draw], Turns]] = {}


def _template(registry: dict[str, Callable[[_Draw], Turns]]) -> Callable:
    def register(fn: Callable[[_Draw], Turns]) -> Callable[[_Draw], Turns]:
        registry[fn.__name__.lstrip("_")] = fn
        return fn

    return register


@_template(_TEMPLATES)
def _customers_in_city_count(d: _Draw) -> Turns:
    c = d.one(*d.f.cities)
    q = d.one(
        f"How many customers live in {c}?",
        f"What is the number of customers based in {c}?",
        f"Count the customers from {c}.",
        f"how many of our customers are in {c}",
    )
    return [(q, f"SELECT COUNT(*) FROM customers WHERE city = {_q(c)};")]


@_template(_TEMPLATES)
def _customers_in_country_count(d: _Draw) -> Turns:
    c = d.one(*d.f.countries)
    q = d.one(
        f"How many customers do we have in {c}?",
        f"Number of customers located in {c}?",
        f"What's our customer count for {c}?",
    )
    return [(q, f"SELECT COUNT(*) FROM customers WHERE country = {_q(c)};")]


def _city_list(c: str, extra: str = "") -> str:
    return f"SELECT first_name, last_name FROM customers WHERE city = {_q(c)}{extra} ORDER BY last_name, first_name;"


@_template(_TEMPLATES)
def _customers_in_city_list(d: _Draw, c: str | None = None) -> Turns:
    c = c or d.one(*d.f.cities)
    q = d.one(
        f"List the names of customers who live in {c}.",
        f"Which customers are from {c}? Give first and last names.",
        f"Show me every customer in {c}, sorted by last name.",
    )
    return [(q, _city_list(c))]


@_template(_TEMPLATES)
def _customers_per_country(d: _Draw) -> Turns:
    q = d.one(
        "How many customers do we have in each country?",
        "Give the customer count per country, largest first.",
        "Break down our customers by country.",
    )
    return [(q, "SELECT country, COUNT(*) AS customers FROM customers GROUP BY country ORDER BY customers DESC;")]


@_template(_TEMPLATES)
def _countries_with_many_customers(d: _Draw) -> Turns:
    n = d.one(5, 10, 15, 20, 25, 30)
    q = d.one(
        f"Which countries have more than {n} customers?",
        f"List the countries where we have over {n} customers.",
        f"Show countries with a customer count above {n}.",
    )
    return [
        (
            q,
            f"SELECT country, COUNT(*) AS customers FROM customers GROUP BY country HAVING COUNT(*) > {n} ORDER BY customers DESC;",
        )
    ]


@_template(_TEMPLATES)
def _signups_in_year(d: _Draw) -> Turns:
    y = d.rng.randint(2021, 2024)
    q = d.one(
        f"How many customers signed up in {y}?",
        f"How many new customers joined during {y}?",
        f"Count the customer sign-ups in {y}.",
    )
    return [(q, f"SELECT COUNT(*) FROM customers WHERE signup_date BETWEEN '{y}-01-01' AND '{y}-12-31';")]


@_template(_TEMPLATES)
def _signups_in_month(d: _Draw) -> Turns:
    y = d.rng.randint(2021, 2024)
    m = d.rng.randint(1, 6 if y == 2024 else 12)  # sign-ups end in June 2024
    label = f"{calendar.month_name[m]} {y}"
    q = d.one(
        f"Which customers signed up in {label}?", f"List the customers who joined in {label}, with their sign-up dates."
    )
    return [
        (
            q,
            f"SELECT first_name, last_name, signup_date FROM customers WHERE {_in_month('signup_date', y, m)} ORDER BY signup_date;",
        )
    ]


@_template(_TEMPLATES)
def _customer_email(d: _Draw) -> Turns:
    first, last = d.one(*d.f.buyers)
    q = d.one(
        f"What is {first} {last}'s email address?",
        f"Find the email of the customer {first} {last}.",
        f"Give me the e-mail for {first} {last}.",
    )
    return [(q, f"SELECT email FROM customers WHERE first_name = {_q(first)} AND last_name = {_q(last)};")]


@_template(_TEMPLATES)
def _products_in_category(d: _Draw) -> Turns:
    c = d.one(*d.f.categories)
    q = d.one(
        f"What products do we sell in the {c} category?",
        f"List all {c} products with their prices.",
        f"Show the names and prices of our {c} items.",
    )
    return [(q, f"SELECT name, price FROM products WHERE category = {_q(c)} ORDER BY name;")]


@_template(_TEMPLATES)
def _most_expensive_product(d: _Draw) -> Turns:
    q = d.one(
        "What is our most expensive product?",
        "Which product has the highest price?",
        "Find the priciest item in the shop.",
    )
    return [(q, "SELECT name, price FROM products ORDER BY price DESC LIMIT 1;")]


@_template(_TEMPLATES)
def _cheapest_in_category(d: _Draw) -> Turns:
    c = d.one(*d.f.categories)
    q = d.one(
        f"What's the cheapest item in {c}?",
        f"Which {c} product costs the least?",
        f"Find the lowest-priced product in the {c} category.",
    )
    return [(q, f"SELECT name, price FROM products WHERE category = {_q(c)} ORDER BY price ASC LIMIT 1;")]


@_template(_TEMPLATES)
def _top_expensive_in_category(d: _Draw, n: int | None = None) -> Turns:
    c, n = d.one(*d.f.categories), n or d.rng.randint(3, 5)
    q = d.one(
        f"Show the {n} most expensive {c} products.",
        f"What are the top {n} {c} items by price?",
        f"List {n} {c} products with the highest prices.",
    )
    return [(q, f"SELECT name, price FROM products WHERE category = {_q(c)} ORDER BY price DESC LIMIT {n};")]


@_template(_TEMPLATES)
def _avg_price_in_category(d: _Draw) -> Turns:
    c = d.one(*d.f.categories)
    q = d.one(
        f"What is the average price of {c} products?",
        f"How much does a {c} item cost on average?",
        f"Average price in the {c} category?",
    )
    return [(q, f"SELECT ROUND(AVG(price), 2) FROM products WHERE category = {_q(c)};")]


@_template(_TEMPLATES)
def _products_in_price_range(d: _Draw) -> Turns:
    lo = d.one(10, 20, 25, 50, 75, 100, 150)
    hi = lo + d.one(10, 25, 50, 100)
    q = d.one(
        f"Which products cost between ${lo} and ${hi}?",
        f"List items priced from {lo} to {hi} dollars, cheapest first.",
        f"Show me products with a price between {lo} and {hi}.",
    )
    return [(q, f"SELECT name, price FROM products WHERE price BETWEEN {lo} AND {hi} ORDER BY price;")]


@_template(_TEMPLATES)
def _low_stock(d: _Draw) -> Turns:
    n = d.one(20, 30, 50, 75, 100)
    q = d.one(
        f"Which products have fewer than {n} units in stock?",
        f"List products with stock below {n}.",
        f"What items are running low, under {n} left?",
    )
    return [(q, f"SELECT name, stock FROM products WHERE stock < {n} ORDER BY stock;")]


@_template(_TEMPLATES)
def _out_of_stock(d: _Draw) -> Turns:
    q = d.one(
        "Which products are out of stock?", "List the items we have none of in stock.", "What products have zero stock?"
    )
    return [(q, "SELECT name FROM products WHERE stock = 0;")]


@_template(_TEMPLATES)
def _products_per_category(d: _Draw) -> Turns:
    q = d.one(
        "How many products are in each category?",
        "Count the products per category.",
        "Give me the number of items we sell in every category.",
    )
    return [(q, "SELECT category, COUNT(*) AS products FROM products GROUP BY category ORDER BY category;")]


@_template(_TEMPLATES)
def _categories_with_high_avg_price(d: _Draw) -> Turns:
    x = d.one(30, 50, 75, 100, 150)
    q = d.one(
        f"Which categories have an average price above ${x}?",
        f"List the categories whose products average more than {x} dollars.",
    )
    return [
        (
            q,
            f"SELECT category, ROUND(AVG(price), 2) AS avg_price FROM products GROUP BY category HAVING AVG(price) > {x} ORDER BY avg_price DESC;",
        )
    ]


@_template(_TEMPLATES)
def _products_above_average(d: _Draw) -> Turns:
    q = d.one(
        "Which products cost more than the average product?",
        "List the products priced above the average price, most expensive first.",
    )
    return [
        (q, "SELECT name, price FROM products WHERE price > (SELECT AVG(price) FROM products) ORDER BY price DESC;")
    ]


@_template(_TEMPLATES)
def _orders_with_status(d: _Draw) -> Turns:
    s = d.one(*STATUSES)
    q = d.one(f"How many orders are {s}?", f"How many orders have the status '{s}'?", f"Count the {s} orders.")
    return [(q, f"SELECT COUNT(*) FROM orders WHERE status = '{s}';")]


@_template(_TEMPLATES)
def _orders_in_month(d: _Draw) -> Turns:
    y, m, label = d.month()
    q = d.one(
        f"How many orders were placed in {label}?", f"Number of orders in {label}?", f"Count the orders from {label}."
    )
    return [(q, f"SELECT COUNT(*) FROM orders WHERE {_in_month('order_date', y, m)};")]


@_template(_TEMPLATES)
def _orders_per_status(d: _Draw) -> Turns:
    q = d.one(
        "How many orders are there in each status?",
        "Break down the orders by status.",
        "Give me the order count per status, most common first.",
    )
    return [(q, "SELECT status, COUNT(*) AS orders FROM orders GROUP BY status ORDER BY orders DESC;")]


@_template(_TEMPLATES)
def _monthly_orders(d: _Draw) -> Turns:
    y = d.year()
    q = d.one(
        f"Show the number of orders per month in {y}.",
        f"How many orders did we get each month of {y}?",
        f"Monthly order counts for {y}, please.",
    )
    return [
        (
            q,
            f"SELECT strftime('%m', order_date) AS month, COUNT(*) AS orders FROM orders WHERE strftime('%Y', order_date) = '{y}' GROUP BY month ORDER BY month;",
        )
    ]


@_template(_TEMPLATES)
def _orders_of_customer(d: _Draw) -> Turns:
    first, last = d.one(*d.f.buyers)
    q = d.one(
        f"List the orders placed by {first} {last}.",
        f"Show all orders from {first} {last} with their dates and status.",
        f"What has {first} {last} ordered? Give order ids and dates.",
    )
    return [
        (
            q,
            f"SELECT o.id, o.order_date, o.status FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.first_name = {_q(first)} AND c.last_name = {_q(last)} ORDER BY o.order_date;",
        )
    ]


@_template(_TEMPLATES)
def _last_order_of_customer(d: _Draw) -> Turns:
    first, last = d.one(*d.f.buyers)
    q = d.one(
        f"When did {first} {last} last place an order?", f"What is the date of {first} {last}'s most recent order?"
    )
    return [
        (
            q,
            f"SELECT MAX(o.order_date) FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.first_name = {_q(first)} AND c.last_name = {_q(last)};",
        )
    ]


@_template(_TEMPLATES)
def _spend_of_customer(d: _Draw) -> Turns:
    first, last = d.one(*d.f.buyers)
    q = d.one(
        f"How much has {first} {last} spent in total?",
        f"What is the total amount {first} {last} has paid us?",
        f"Total spend of customer {first} {last}?",
    )
    return [
        (
            q,
            f"SELECT {_REVENUE} {_ITEMS_ORDERS} JOIN customers c ON c.id = o.customer_id WHERE c.first_name = {_q(first)} AND c.last_name = {_q(last)};",
        )
    ]


@_template(_TEMPLATES)
def _revenue_in_year(d: _Draw) -> Turns:
    y = d.year()
    q = d.one(
        f"What was the total revenue in {y}, not counting cancelled orders?",
        f"How much did we sell in {y}, excluding cancelled orders?",
        f"Total sales for {y} without the cancelled orders?",
    )
    return [
        (
            q,
            f"SELECT {_REVENUE} {_ITEMS_ORDERS} WHERE o.order_date BETWEEN '{y}-01-01' AND '{y}-12-31' AND o.status <> 'cancelled';",
        )
    ]


@_template(_TEMPLATES)
def _revenue_per_category(d: _Draw) -> Turns:
    q = d.one(
        "What is the revenue per product category?",
        "How much has each category sold in total?",
        "Show total sales by category, highest first.",
    )
    return [
        (
            q,
            f"SELECT p.category, {_REVENUE} AS revenue FROM order_items oi JOIN products p ON p.id = oi.product_id GROUP BY p.category ORDER BY revenue DESC;",
        )
    ]


@_template(_TEMPLATES)
def _top_customers_by_spend(d: _Draw) -> Turns:
    n = d.rng.randint(3, 10)
    q = d.one(
        f"Who are our top {n} customers by total spend?",
        f"List the {n} customers who have spent the most.",
        f"Which {n} customers brought in the most revenue?",
    )
    return [
        (
            q,
            f"SELECT c.first_name, c.last_name, {_REVENUE} AS total {_ITEMS_ORDERS} JOIN customers c ON c.id = o.customer_id GROUP BY c.id ORDER BY total DESC LIMIT {n};",
        )
    ]


@_template(_TEMPLATES)
def _best_selling_products(d: _Draw) -> Turns:
    n = d.rng.randint(3, 10)
    q = d.one(
        f"What are the {n} best-selling products by units sold?",
        f"Top {n} products by quantity sold?",
        f"Which {n} products sold the most units?",
    )
    return [
        (
            q,
            f"SELECT p.name, SUM(oi.quantity) AS units FROM order_items oi JOIN products p ON p.id = oi.product_id GROUP BY p.id ORDER BY units DESC LIMIT {n};",
        )
    ]


@_template(_TEMPLATES)
def _orders_per_city(d: _Draw) -> Turns:
    q = d.one(
        "How many orders came from each city?",
        "Count the orders per customer city, most first.",
        "Which cities order the most? Give order counts.",
    )
    return [
        (
            q,
            "SELECT c.city, COUNT(*) AS orders FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY c.city ORDER BY orders DESC;",
        )
    ]


@_template(_TEMPLATES)
def _city_with_most_status(d: _Draw) -> Turns:
    s = d.one("cancelled", "returned", "pending")
    q = d.one(f"Which city has the most {s} orders?", f"In which city were the most orders {s}?")
    return [
        (
            q,
            f"SELECT c.city, COUNT(*) AS orders FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.status = '{s}' GROUP BY c.city ORDER BY orders DESC LIMIT 1;",
        )
    ]


@_template(_TEMPLATES)
def _average_order_value(d: _Draw) -> Turns:
    q = d.one("What is the average order value?", "How much is an order worth on average?", "Average total per order?")
    return [
        (
            q,
            "SELECT ROUND(AVG(total), 2) FROM (SELECT order_id, SUM(quantity * unit_price) AS total FROM order_items GROUP BY order_id);",
        )
    ]


@_template(_TEMPLATES)
def _customers_without_orders(d: _Draw) -> Turns:
    q = d.one(
        "Which customers have never placed an order?",
        "List customers with no orders at all.",
        "Who signed up but never bought anything?",
    )
    return [
        (
            q,
            "SELECT c.first_name, c.last_name FROM customers c LEFT JOIN orders o ON o.customer_id = c.id WHERE o.id IS NULL ORDER BY c.last_name;",
        )
    ]


@_template(_TEMPLATES)
def _products_never_ordered(d: _Draw) -> Turns:
    q = d.one(
        "Which products have never been ordered?",
        "List the products nobody has bought yet.",
        "What items have zero sales?",
    )
    return [(q, "SELECT name FROM products WHERE id NOT IN (SELECT product_id FROM order_items) ORDER BY name;")]


@_template(_TEMPLATES)
def _buyers_of_product(d: _Draw) -> Turns:
    p = d.one(*d.f.products)
    q = d.one(
        f"How many different customers have bought the {p}?",
        f"Number of distinct customers who ordered {p}?",
        f"How many unique buyers does the {p} have?",
    )
    return [
        (
            q,
            f"SELECT COUNT(DISTINCT o.customer_id) {_ITEMS_ORDERS} JOIN products p ON p.id = oi.product_id WHERE p.name = {_q(p)};",
        )
    ]


@_template(_TEMPLATES)
def _max_quantity_of_product(d: _Draw) -> Turns:
    p = d.one(*d.f.products)
    q = d.one(f"What is the largest quantity of {p} bought in a single order?", f"Most units of {p} in one order?")
    return [
        (
            q,
            f"SELECT MAX(oi.quantity) FROM order_items oi JOIN products p ON p.id = oi.product_id WHERE p.name = {_q(p)};",
        )
    ]


@_template(_TEMPLATES)
def _units_of_category_in_year(d: _Draw) -> Turns:
    c, y = d.one(*d.f.categories), d.year()
    q = d.one(
        f"How many {c} items did we sell in {y}?",
        f"Total units sold in the {c} category during {y}?",
        f"In {y}, how many units of {c} products were ordered?",
    )
    return [
        (
            q,
            f"SELECT SUM(oi.quantity) {_ITEMS_ORDERS} JOIN products p ON p.id = oi.product_id WHERE p.category = {_q(c)} AND o.order_date BETWEEN '{y}-01-01' AND '{y}-12-31';",
        )
    ]


@_template(_TEMPLATES)
def _order_total(d: _Draw) -> Turns:
    i = d.one(*d.f.order_ids)
    q = d.one(
        f"What is the total amount of order {i}?",
        f"How much was order #{i} worth?",
        f"Total value of order number {i}?",
    )
    return [(q, f"SELECT ROUND(SUM(quantity * unit_price), 2) FROM order_items WHERE order_id = {i};")]


@_template(_TEMPLATES)
def _products_in_order(d: _Draw) -> Turns:
    i = d.one(*d.f.order_ids)
    q = d.one(
        f"Which products were in order {i}?",
        f"List the items and quantities of order #{i}.",
        f"What did the customer buy in order {i}?",
    )
    return [
        (
            q,
            f"SELECT p.name, oi.quantity FROM order_items oi JOIN products p ON p.id = oi.product_id WHERE oi.order_id = {i};",
        )
    ]


@_template(_TEMPLATES)
def _customer_city(d: _Draw) -> Turns:
    first, last = d.one(*d.f.buyers)
    q = d.one(
        f"Where does {first} {last} live?",
        f"Which city is {first} {last} from?",
        f"What city and country is customer {first} {last} in?",
    )
    return [(q, f"SELECT city, country FROM customers WHERE first_name = {_q(first)} AND last_name = {_q(last)};")]


@_template(_TEMPLATES)
def _customer_signup_date(d: _Draw) -> Turns:
    first, last = d.one(*d.f.buyers)
    q = d.one(
        f"When did {first} {last} sign up?",
        f"What is the sign-up date of {first} {last}?",
        f"Since when has {first} {last} been a customer?",
    )
    return [(q, f"SELECT signup_date FROM customers WHERE first_name = {_q(first)} AND last_name = {_q(last)};")]


@_template(_TEMPLATES)
def _order_count_of_customer(d: _Draw) -> Turns:
    first, last = d.one(*d.f.buyers)
    q = d.one(
        f"How many orders has {first} {last} placed?",
        f"Count the orders of {first} {last}.",
        f"Number of orders by {first} {last}?",
    )
    return [
        (
            q,
            f"SELECT COUNT(*) FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.first_name = {_q(first)} AND c.last_name = {_q(last)};",
        )
    ]


@_template(_TEMPLATES)
def _product_price(d: _Draw) -> Turns:
    p = d.one(*d.f.products)
    q = d.one(f"How much does the {p} cost?", f"What's the price of the {p}?", f"Price of {p}?")
    return [(q, f"SELECT price FROM products WHERE name = {_q(p)};")]


@_template(_TEMPLATES)
def _product_stock(d: _Draw) -> Turns:
    p = d.one(*d.f.products)
    q = d.one(
        f"How many {p} units do we have in stock?",
        f"What is the stock level of the {p}?",
        f"Is the {p} in stock? Give the count.",
    )
    return [(q, f"SELECT stock FROM products WHERE name = {_q(p)};")]


@_template(_TEMPLATES)
def _product_category(d: _Draw) -> Turns:
    p = d.one(*d.f.products)
    q = d.one(f"What category is the {p} in?", f"Which category does {p} belong to?")
    return [(q, f"SELECT category FROM products WHERE name = {_q(p)};")]


@_template(_TEMPLATES)
def _revenue_of_product(d: _Draw) -> Turns:
    p = d.one(*d.f.products)
    q = d.one(
        f"How much revenue has the {p} brought in?", f"What are the total sales of {p}?", f"Total revenue from the {p}?"
    )
    return [
        (q, f"SELECT {_REVENUE} FROM order_items oi JOIN products p ON p.id = oi.product_id WHERE p.name = {_q(p)};")
    ]


@_template(_TEMPLATES)
def _orders_from_city_in_year(d: _Draw) -> Turns:
    c, y = d.one(*d.f.cities), d.year()
    q = d.one(
        f"How many orders came from {c} in {y}?",
        f"Number of orders placed by customers in {c} during {y}?",
        f"In {y}, how many orders did {c} customers make?",
    )
    return [
        (
            q,
            f"SELECT COUNT(*) FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.city = {_q(c)} AND o.order_date BETWEEN '{y}-01-01' AND '{y}-12-31';",
        )
    ]


@_template(_TEMPLATES)
def _orders_with_status_in_month(d: _Draw) -> Turns:
    s = d.one(*STATUSES)
    y, m, label = d.month()
    q = d.one(
        f"List the {s} orders from {label}.",
        f"Which orders placed in {label} are {s}?",
        f"Show ids and dates of {s} orders in {label}.",
    )
    return [
        (
            q,
            f"SELECT id, order_date FROM orders WHERE status = '{s}' AND {_in_month('order_date', y, m)} ORDER BY order_date;",
        )
    ]


@_template(_TEMPLATES)
def _top_categories_in_year(d: _Draw) -> Turns:
    n, y = d.rng.randint(2, 5), d.year()
    q = d.one(
        f"Which {n} categories sold the most units in {y}?",
        f"Top {n} categories by units sold in {y}?",
        f"In {y}, what were the {n} best-selling categories?",
    )
    return [
        (
            q,
            f"SELECT p.category, SUM(oi.quantity) AS units {_ITEMS_ORDERS} JOIN products p ON p.id = oi.product_id WHERE o.order_date BETWEEN '{y}-01-01' AND '{y}-12-31' GROUP BY p.category ORDER BY units DESC LIMIT {n};",
        )
    ]


@_template(_TEMPLATES)
def _big_spenders_in_city(d: _Draw) -> Turns:
    c, x = d.one(*d.f.cities), d.one(100, 250, 500, 1000)
    q = d.one(
        f"Which customers in {c} have spent more than ${x} in total?",
        f"List {c} customers whose total spend is over {x} dollars.",
    )
    return [
        (
            q,
            f"SELECT c.first_name, c.last_name, {_REVENUE} AS total {_ITEMS_ORDERS} JOIN customers c ON c.id = o.customer_id WHERE c.city = {_q(c)} GROUP BY c.id HAVING SUM(oi.quantity * oi.unit_price) > {x} ORDER BY total DESC;",
        )
    ]


# Follow-ups: a second question that refines the first query.
@_template(_TEMPLATES)
def _followup_city_recent_signups(d: _Draw) -> Turns:
    c, y = d.one(*d.f.cities), d.rng.randint(2022, 2024)
    q2 = d.one(f"Only the ones who signed up in {y} or later.", f"Now just those who joined since {y}.")
    return [*_customers_in_city_list(d, c), (q2, _city_list(c, f" AND signup_date >= '{y}-01-01'"))]


@_template(_TEMPLATES)
def _followup_top_products_fewer(d: _Draw) -> Turns:
    n = d.rng.randint(3, 5)
    m = d.rng.randint(1, n - 1)
    [(q1, a1)] = _top_expensive_in_category(d, n)
    q2 = d.one(f"Now just the top {m}.", f"Only show {m} of them." if m > 1 else "Only the most expensive one.")
    return [(q1, a1), (q2, a1.replace(f"LIMIT {n};", f"LIMIT {m};"))]


@_template(_TEMPLATES)
def _followup_status_in_year(d: _Draw) -> Turns:
    [(q1, a1)] = _orders_with_status(d)
    y = d.year()
    q2 = d.one(f"And how many of those were placed in {y}?", f"What about just {y}?")
    return [(q1, a1), (q2, a1.replace(";", f" AND order_date BETWEEN '{y}-01-01' AND '{y}-12-31';"))]


@_template(_TEMPLATES)
def _followup_best_sellers_in_year(d: _Draw) -> Turns:
    [(q1, a1)] = _best_selling_products(d)
    y = d.year()
    q2 = d.one(f"Restrict that to orders from {y}.", f"Same, but only for {y}.")
    a2 = a1.replace("FROM order_items oi", "FROM order_items oi JOIN orders o ON o.id = oi.order_id").replace(
        " GROUP BY", f" WHERE o.order_date BETWEEN '{y}-01-01' AND '{y}-12-31' GROUP BY"
    )
    return [(q1, a1), (q2, a2)]


@_template(_TEMPLATES)
def _followup_category_under_price(d: _Draw) -> Turns:
    [(q1, a1)] = _products_in_category(d)
    x = d.one(20, 30, 50, 100)
    q2 = d.one(f"Only those under ${x}, cheapest first.", f"Which of them cost less than {x} dollars? Sort by price.")
    return [(q1, a1), (q2, a1.replace(" ORDER BY name;", f" AND price < {x} ORDER BY price;"))]


@_template(_TEMPLATES)
def _followup_countries_at_least(d: _Draw) -> Turns:
    [(q1, a1)] = _customers_per_country(d)
    n = d.one(5, 10, 20, 30)
    q2 = d.one(f"Only show countries with at least {n} customers.", f"Limit it to countries with {n} or more.")
    return [(q1, a1), (q2, a1.replace(" ORDER BY", f" HAVING COUNT(*) >= {n} ORDER BY"))]


# Hard negatives: correct rows whose words look like a flaw to a careless checker.
@_template(_HARD_NEGATIVES)
def _hard_sorry_in_question(d: _Draw) -> Turns:
    [(q, a)] = _orders_with_status(d)
    return [(f"Sorry if this is a basic question, but {q[0].lower()}{q[1:]}", a)]


@_template(_HARD_NEGATIVES)
def _hard_as_an_ai_in_question(d: _Draw) -> Turns:
    [(q, a)] = _customers_in_city_count(d)
    return [(f"As an AI researcher I need one number: {q[0].lower()}{q[1:]}", a)]


@_template(_HARD_NEGATIVES)
def _hard_cant_remember(d: _Draw) -> Turns:
    word = d.one("Kettle", "Lamp", "Set", "Bag", "Shoes", "Mat", "Pen")
    q = f"I can't remember the exact name. Which products have '{word}' in their name?"
    return [(q, f"SELECT name FROM products WHERE name LIKE '%{word}%';")]


@_template(_HARD_NEGATIVES)
def _hard_braces_in_sql(d: _Draw) -> Turns:
    c = d.one(*d.f.categories)
    q = f"Format each {c} product as {{name: price}}, one per row."
    return [(q, f"SELECT printf('{{%s: %.2f}}', name, price) FROM products WHERE category = {_q(c)} ORDER BY name;")]


@_template(_HARD_NEGATIVES)
def _hard_bracket_identifiers(d: _Draw) -> Turns:
    c = d.one(*d.f.categories)
    q = f"Using bracket-quoted identifiers, list the [name] and [price] of every {c} product."
    return [(q, f"SELECT [name], [price] FROM [products] WHERE [category] = {_q(c)};")]


# ---------------------------------------------------------------------------------------------
# Conversations


_WORD = re.compile(r"\w+")


def shingles(messages: list[dict[str, Any]]) -> frozenset[str]:
    """Word 3-grams of the non-system text (the data stage's near-duplicate measure). Joined into
    strings because a str caches its hash and a tuple does not: the set algebra runs ~5x faster."""
    words = _WORD.findall(" ".join(m.get("content") or "" for m in messages if m.get("role") != "system").lower())
    return frozenset(map(" ".join, zip(words, words[1:], words[2:])))


def jaccard(a: frozenset, b: frozenset) -> float:
    common = len(a & b)
    return common / (len(a) + len(b) - common) if a or b else 1.0


def _fold(messages: list[dict[str, Any]]) -> str:
    return "\x1e".join(f"{m.get('role')}\x1f{' '.join(str(m.get('content')).lower().split())}" for m in messages)


def _casual(q: str, rng: random.Random) -> str:
    """People type questions in a hurry: sometimes all lower case, sometimes no final mark."""
    if rng.random() < 0.08:
        q = q.lower()
    if rng.random() < 0.1:
        q = q.rstrip("?.")
    return q


def _messages(turns: Turns) -> list[dict[str, str]]:
    out = [{"role": "system", "content": SYSTEM_PROMPT}]
    for q, a in turns:
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return out


class _Pool:
    """Draws clean conversations: unique (case/space-folded), not near duplicates of another row of
    the same template, every query executed and returning a non-empty, non-trivial result."""

    def __init__(self, db: sqlite3.Connection, rng: random.Random):
        self.db, self.rng, self.draw = db, rng, _Draw(rng, _Facts.read(db))
        self.seen: set[str] = set()
        self.by_template: dict[str, list[frozenset]] = {}

    def _answers(self, sql: str) -> bool:
        try:
            rows = self.db.execute(sql).fetchall()
        except sqlite3.Error:
            return False
        return any(v not in (None, 0) for row in rows for v in row)

    def take(self, registry: dict[str, Callable[[_Draw], Turns]], name: str, tries: int = 30) -> dict[str, Any] | None:
        for _ in range(tries):
            turns = [(_casual(q, self.rng), a) for q, a in registry[name](self.draw)]
            messages = _messages(turns)
            key, grams = _fold(messages), shingles(messages)
            if key in self.seen or any(jaccard(grams, g) >= CLEAN_MAX_JACCARD for g in self.by_template.get(name, ())):
                continue
            if not all(self._answers(a) for _, a in turns):
                continue
            self.seen.add(key)
            self.by_template.setdefault(name, []).append(grams)
            return {"messages": messages, "template": name}
        return None  # this template has run out of distinct questions

    def take_many(
        self, registry: dict[str, Callable[[_Draw], Turns]], n: int, followup_share: float = 0.15
    ) -> list[dict[str, Any]]:
        """`n` rows, templates drawn evenly; ~followup_share of them multi-turn. A template gives at
        most 3x its even share until every template is spent, so no few dominate the data."""
        out: list[dict[str, Any]] = []
        count: dict[str, int] = dict.fromkeys(registry, 0)
        spent: set[str] = set()
        cap = -(-3 * n // len(registry))
        while len(out) < n:
            open_ = [t for t in sorted(registry) if t not in spent and count[t] < cap]
            if not open_:
                if len(spent) == len(registry):
                    raise ValueError(
                        f"the templates ran out of distinct questions after {len(out)} rows (asked for {n})"
                    )
                cap = n  # every template is spent or capped: let the capped ones give more
                continue
            followups = [t for t in open_ if t.startswith("followup_")]
            singles = [t for t in open_ if t not in followups]
            name = self.rng.choice(
                followups if followups and (not singles or self.rng.random() < followup_share) else singles
            )
            row = self.take(registry, name)
            if row is None:
                spent.add(name)
            else:
                out.append(row)
                count[name] += 1
        return out


def planned_flaws(n: int, flaw_rate: float = 0.08) -> dict[str, int]:
    """How many rows of each flaw (and hard negatives) `generate_conversations` writes among `n`."""
    total = round(n * flaw_rate)
    exact = {k: total * s for k, s in FLAW_SHARES.items()}
    counts = {k: int(v) for k, v in exact.items()}
    # Largest remainder, so the counts add up to exactly `total`.
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[: total - sum(counts.values())]:
        counts[k] += 1
    counts[HARD_NEGATIVE] = max(1, round(n * HARD_NEGATIVE_RATE)) if n >= 50 else 0
    return counts


_REFUSALS = (
    "As an AI language model, I cannot access your database, so I can't write this query.",
    "I'm sorry, but I can't help with that.",
    "I apologize, but I cannot run queries against your data.",
    "I'm sorry, but I am unable to assist with database questions.",
)
# First words of questions and a same-meaning swap. Changing the first word changes one 3-gram
# (any other word changes three), so a near duplicate stays near even for a short row.
_FIRST_WORD_SWAPS = {
    "list": "show",
    "show": "list",
    "which": "what",
    "what": "which",
    "give": "show",
    "find": "get",
    "count": "tally",
    "who": "which",
    "how": "and how",
    "when": "so when",
}


def _flawed(kind: str, base: dict[str, Any], i: int, rng: random.Random) -> dict[str, Any] | str:
    """Break a clean row in the way `kind` names. `i` cycles through the variants of each kind."""
    msgs = [dict(m) for m in base["messages"]]
    question, answer = msgs[1]["content"], msgs[-1]["content"]
    if kind == "refusal":
        msgs[-1]["content"] = _REFUSALS[i % len(_REFUSALS)]
    elif kind == "empty_answer":
        msgs[-1]["content"] = ("", "   ", "\n")[i % 3]
    elif kind == "placeholder":
        msgs[-1]["content"] = (
            "SELECT * FROM {{table_name}};",
            "<INSERT QUERY HERE>",
            f"-- Query by [Your Name]\n{answer}",
            re.sub(r"^SELECT .+? FROM", "SELECT {{ columns }} FROM", answer),
        )[i % 4]
    elif kind == "answer_truncated":
        # A generation stuck in a loop: the answer, then the same line again and again (10k
        # characters: over 2,000 tokens even for a tokenizer trained on these queries).
        msgs[-1]["content"] = answer + "".join(f"\n{answer}" for _ in range(10_000 // len(answer) + 1))
    elif kind == "no_assistant_message":
        msgs = msgs[:2]
    elif kind == "last_not_assistant":
        msgs = msgs[:3] + [
            {
                "role": "user",
                "content": rng.choice(
                    ("Thanks! Can you also sort it?", "And for last year?", "Now only the first ten rows, please.")
                ),
            }
        ]
    elif kind == "unknown_role":
        msgs[1]["role"] = ("human", "customer", "question")[i % 3]
    elif kind == "invalid_json":
        row = json.dumps({FLAW_KEY: kind, "messages": msgs[1:3]}, ensure_ascii=False)
        return (
            row[: len(row) * 2 // 3],  # cut off mid-row
            row[:-1] + ",}",  # trailing comma
            row.replace('"', "'"),  # a Python dict, not JSON
            row.replace(
                json.dumps(question, ensure_ascii=False)[1:-1], f'She asked "{question}"', 1
            ),  # unescaped quotes
        )[i % 4]
    return {"messages": msgs, "template": base["template"], FLAW_KEY: kind}


def _near_duplicate(base: dict[str, Any]) -> dict[str, Any] | None:
    """The row with the question's first word swapped for a same-meaning one, if that keeps the
    row at least NEAR_DUP_MIN_JACCARD similar."""
    msgs = [dict(m) for m in base["messages"]]
    first, _, rest = msgs[1]["content"].partition(" ")
    if first.lower() not in _FIRST_WORD_SWAPS:
        return None
    new = _FIRST_WORD_SWAPS[first.lower()]
    msgs[1]["content"] = f"{new.capitalize() if first[0].isupper() else new} {rest}"
    if jaccard(shingles(msgs), shingles(base["messages"])) < NEAR_DUP_MIN_JACCARD:
        return None
    return {"messages": msgs, "template": base["template"], FLAW_KEY: "near_duplicate"}


def _exact_duplicate(base: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The row again with only case and spacing changed in the question."""
    msgs = [dict(m) for m in base["messages"]]
    q = msgs[1]["content"]
    q = rng.choice((q.upper(), q.lower(), q.swapcase()))
    msgs[1]["content"] = "  " + q.replace(" ", "  ", 2) + " "
    return {"messages": msgs, "template": base["template"], FLAW_KEY: "exact_duplicate"}


def generate_conversations(
    db_path: str | Path, n: int = 3000, flaw_rate: float = 0.08, seed: int = 0
) -> list[dict[str, Any] | str]:
    """`n` rows for the database at `db_path`: dicts in OpenAI messages form, and for the
    `invalid_json` flaw the raw text of a broken line. Same database and seed, same rows."""
    if not 0 <= flaw_rate <= 0.5:
        raise ValueError(f"flaw_rate {flaw_rate}: expected 0 to 0.5 (duplicates need clean rows to copy)")
    rng = random.Random(seed)
    plan = planned_flaws(n, flaw_rate)
    n_flawed = sum(v for k, v in plan.items() if k != HARD_NEGATIVE)
    n_copies = plan["exact_duplicate"] + plan["near_duplicate"]
    n_clean = n - n_flawed - plan[HARD_NEGATIVE]
    with sqlite3.connect(f"file:{Path(db_path)}?mode=ro", uri=True) as db:
        pool = _Pool(db, rng)
        clean = pool.take_many(_TEMPLATES, n_clean + n_flawed - n_copies)
        hard = pool.take_many(_HARD_NEGATIVES, plan[HARD_NEGATIVE], followup_share=0)
    db.close()
    clean, bases = clean[:n_clean], clean[n_clean:]
    for row in hard:
        row[FLAW_KEY] = HARD_NEGATIVE

    # Sort keys place every row; a copy lands after the row it copies ("a duplicate of an earlier row").
    placed: list[tuple[float, dict[str, Any] | str, dict[str, Any] | None]] = [
        (i, row, None) for i, row in enumerate(clean)
    ]
    placed += [(rng.uniform(0, n_clean), row, None) for row in hard]
    for kind, count in plan.items():
        if kind in (HARD_NEGATIVE, "exact_duplicate", "near_duplicate"):
            continue
        placed += [(rng.uniform(0, n_clean), _flawed(kind, bases.pop(), i, rng), None) for i in range(count)]
    for kind in ("exact_duplicate", "near_duplicate"):
        made = 0
        for _ in range(100 * plan[kind]):
            if made == plan[kind]:
                break
            src = rng.randrange(n_clean)
            copy = _exact_duplicate(clean[src], rng) if kind == "exact_duplicate" else _near_duplicate(clean[src])
            if copy is None:
                continue
            if kind == "near_duplicate":  # one near copy per source: two would be exact copies of each other
                if (key := _fold(copy["messages"])) in pool.seen:
                    continue
                pool.seen.add(key)
            placed.append((rng.uniform(src + 0.5, n_clean), copy, clean[src]))
            made += 1
        if made < plan[kind]:
            raise ValueError(f"found rows for only {made} of {plan[kind]} {kind} flaws; ask for more rows")
    placed.sort(key=lambda p: p[0])

    ids = {id(row): f"t2s-{k:05d}" for k, (_, row, _) in enumerate(placed)}
    out: list[dict[str, Any] | str] = []
    for _, row, source in placed:
        if isinstance(row, dict):
            row = {"id": ids[id(row)], **row}
            if source is not None:
                row["duplicate_of"] = ids[id(source)]
        out.append(row)
    return out


def write_conversations(path: str | Path, rows: list[dict[str, Any] | str]) -> Path:
    """One row a line (atomic); raw strings (the invalid-JSON flaws) are written as they are."""
    with atomic_open(path) as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False, separators=(",", ":")))
            f.write("\n")
    return Path(path)


def write_example(out_dir: str | Path, n: int = 3000, seed: int = 0) -> tuple[Path, Path]:
    """Write `shop.sqlite` and `conversations.jsonl` into `out_dir`; returns both paths."""
    out_dir = Path(out_dir)
    db_path = generate_database(out_dir / DB_FILE, seed=seed)
    rows = generate_conversations(db_path, n=n, seed=seed)
    return db_path, write_conversations(out_dir / CONVERSATIONS_FILE, rows)


EXAMPLE_CORPUS_SIZE = 600  # conversations example_texts() generates: ~1 s


@functools.lru_cache(maxsize=1)
def example_texts(n: int = EXAMPLE_CORPUS_SIZE) -> tuple[str, ...]:
    """Message texts of clean example conversations (generated, deterministic): the corpus a tiny
    model's tokenizer trains on when no data is given (`tunesmith model tiny`, tests, benchmarks)."""
    with tempfile.TemporaryDirectory() as tmp:
        db = generate_database(Path(tmp) / DB_FILE)
        rows = generate_conversations(db, n=n, flaw_rate=0.0)
    return tuple(m["content"] for row in rows if isinstance(row, dict) for m in row["messages"])
