"""A labelled paraphrase set: how the split's similarity threshold was chosen, and a check that it holds.

Each group is one request worded several ways, as real users word it (typos, different verbs,
polite and terse forms); rows of different groups are different requests. Several groups are hard
negatives of another: they share most words but ask something else ("reset my password" vs "reset
my router", "customers who ordered" vs "customers who never ordered"). A pair is positive when both
texts are in one group. `measure` gives precision and recall of "cosine >= t" over all pairs.

For a leakage-free split recall is what matters: a missed paraphrase pair can straddle train and
validation, while a false link only keeps two different rows on the same side (a slightly coarser
split). The threshold is chosen for recall, with the precision it costs printed beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

GROUPS: list[list[str]] = [
    # Account and support requests
    [
        "How do I reset my password?",
        "I forgot my password, how can I change it?",
        "What are the steps to recover my account password?",
        "can't log in, need a new password",
        "Where do I go to reset a forgotten password?",
    ],
    [
        "How do I reset my router?",
        "My wifi router is stuck, how do I restart it to factory settings?",
        "What's the way to factory reset the router?",
        "router reset instructions please",
    ],
    [
        "I want a refund for my order.",
        "Can I get my money back for this purchase?",
        "How do I request a refund?",
        "Please refund the item I bought last week.",
        "what's the process to return something and get reimbursed",
    ],
    [
        "Can I get a refund on a digital download?",
        "Are e-books and software downloads refundable?",
        "Do you give money back for digital products?",
    ],
    [
        "How do I cancel my subscription?",
        "I'd like to stop my monthly plan.",
        "Please cancel my membership.",
        "how to unsubscribe from the paid plan",
        "End my subscription, I don't want to be charged again.",
    ],
    [
        "How do I upgrade my subscription to the premium plan?",
        "I want to switch to the premium tier.",
        "Can I move my plan up to premium?",
    ],
    [
        "Where is my package?",
        "My order hasn't arrived yet, can you track it?",
        "How can I check the delivery status of my order?",
        "track my shipment",
        "When will my parcel be delivered?",
    ],
    [
        "How do I change my shipping address?",
        "I moved, can I update the delivery address on my order?",
        "Update the address my order ships to.",
    ],
    [
        "How do I delete my account?",
        "Please remove my account and all my data.",
        "I want to close my account permanently.",
        "Can you erase my profile?",
    ],
    # SQL questions, each asked several ways, with near-miss questions as hard negatives
    [
        "Show the top 5 customers by total revenue.",
        "Which five customers spent the most?",
        "List the 5 highest-spending customers.",
        "Who are our best five customers by money spent?",
        "Give me the customers with the largest total order value, top 5.",
    ],
    [
        "Show the 5 customers who spent the least.",
        "Which five customers have the lowest total spending?",
        "List the bottom 5 customers by revenue.",
    ],
    [
        "How many orders were placed in March 2024?",
        "Count the orders from March 2024.",
        "What is the number of orders made during March 2024?",
        "total orders in 2024-03",
        "How many purchases happened in March of 2024?",
    ],
    [
        "How many orders were cancelled in 2024?",
        "Count the cancelled orders of 2024.",
        "Number of orders with status cancelled in 2024",
    ],
    [
        "List customers who have never placed an order.",
        "Which customers have no orders at all?",
        "Find the customers without any purchases.",
        "Show customers that never bought anything.",
    ],
    [
        "List customers who placed more than three orders.",
        "Which customers have ordered over 3 times?",
        "Find customers with at least four orders.",
    ],
    [
        "What is the average price of products in the electronics category?",
        "Average price of electronics products?",
        "Compute the mean price for items in electronics.",
        "How much does an electronics product cost on average?",
    ],
    [
        "What is the most expensive product in the electronics category?",
        "Which electronics item has the highest price?",
        "Find the priciest electronics product.",
    ],
    [
        "Which products are out of stock?",
        "List products with zero stock.",
        "Show items we have run out of.",
        "what products have no inventory left",
    ],
    # Everyday requests
    [
        "Translate 'good morning' into French.",
        "How do you say good morning in French?",
        "What's 'good morning' in French?",
    ],
    [
        "Translate 'good night' into Spanish.",
        "How do you say good night in Spanish?",
        "What is the Spanish for 'good night'?",
    ],
    [
        "Write a Python function that reverses a string.",
        "How can I reverse a string in Python?",
        "python code to reverse a str",
        "Give me a Python snippet that returns a string backwards.",
    ],
    [
        "Write a Python function that checks whether a string is a palindrome.",
        "How do I test if a string is a palindrome in Python?",
        "python: is this word a palindrome?",
    ],
    [
        "Summarize this article in three sentences.",
        "Give me a three-sentence summary of the article.",
        "Condense the article into 3 sentences.",
    ],
    [
        "What's the weather like in Paris today?",
        "Is it raining in Paris right now?",
        "Paris weather forecast for today",
    ],
    [
        "What time is it in Tokyo?",
        "Current local time in Tokyo?",
        "tell me the time in tokyo now",
    ],
]


@dataclass
class ThresholdRow:
    threshold: float
    precision: float
    recall: float
    true_links: int
    false_links: int
    group_precision: float  # the same, for "in one connected component" (what the split uses)
    group_recall: float


def labelled_pairs() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, pairs (i, j) as an (n, 2) array, whether each pair is a paraphrase)."""
    texts = [t for group in GROUPS for t in group]
    label = np.repeat(np.arange(len(GROUPS)), [len(g) for g in GROUPS])
    pairs = np.array(list(combinations(range(len(texts)), 2)))
    return texts, pairs, label[pairs[:, 0]] == label[pairs[:, 1]]


def measure(embeddings: np.ndarray, thresholds: Sequence[float]) -> list[ThresholdRow]:
    """Precision and recall of "cosine >= t" over every pair of the labelled set, per threshold.
    `embeddings` are the texts of `labelled_pairs()` in order, L2-normalised."""
    _, pairs, positive = labelled_pairs()
    cosine = np.einsum("ij,ij->i", embeddings[pairs[:, 0]], embeddings[pairs[:, 1]])
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, n, n_pos = [], len(embeddings), max(1, int(positive.sum()))
    for t in thresholds:
        linked = cosine >= t
        tp, fp = int((linked & positive).sum()), int((linked & ~positive).sum())
        edges = pairs[linked]
        graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
        component = connected_components(graph, directed=False)[1]
        together = component[pairs[:, 0]] == component[pairs[:, 1]]
        gtp, gfp = int((together & positive).sum()), int((together & ~positive).sum())
        rows.append(ThresholdRow(t, tp / max(1, tp + fp), tp / n_pos, tp, fp, gtp / max(1, gtp + gfp), gtp / n_pos))
    return rows
