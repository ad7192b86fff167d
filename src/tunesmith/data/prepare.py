"""`prepare`: a file of examples to exactly what training trains on. One rule, two users.

`tunesmith train` calls `prepare` for each file it trains or validates on; `tunesmith data check`
runs the same `fit_rows` over the same rows, so every row the check marks with an ERROR finding is a
row training drops, and no other (tests/data/test_prepare.py holds the two side by side).

The steps, for each row: read and validate (`validate.read_rows`; a row with a format error is
dropped), render with the chat template and mask the answers (`template.iter_encode`; a row the
template rejects is dropped), fit to `max_seq_len` (`Encoded.fit`; a row whose cut reaches an answer
is dropped, one cut only in untrained tokens is trimmed and kept), and drop a row that has no
trained token left (every answer `weight: 0`).

`data/` does not import the config: `settings` is anything with the three fields below (the run
config's `DataConfig` is one).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunesmith.data.schema import Finding, Row, Severity
from tunesmith.data.template import IGNORE_INDEX, Cut, Encoded, TemplateError, TrainOn, iter_encode, trained_indices

# Why a row is dropped, as the training banner says it (the `data check` finding codes in brackets).
DROPPED_DATA_ERROR = "with data errors"  # format findings of severity error
DROPPED_TEMPLATE = "the template rejects"  # template_error, template_drops_content
DROPPED_ANSWER_CUT = "with an answer cut by max_seq_len"  # answer_truncated
DROPPED_NOTHING_TRAINED = "with nothing to train"  # nothing_trained


class DataSettings(Protocol):
    """What `prepare` needs of the data config."""

    format: str  # auto | messages | alpaca | sharegpt | prompt-completion | csv
    max_seq_len: int
    train_on: str  # all | last


@dataclass
class Fitted:
    """One readable row after the template and the `max_seq_len` cut."""

    row: Row
    encoded: Encoded  # before the cut: what `data check`'s length statistics count
    example: Encoded  # after the cut: what training sees when the row is kept
    cut: Cut

    @property
    def kept(self) -> bool:
        return not any(f.severity is Severity.ERROR for f in self.row.findings)


@dataclass
class Prepared:
    """The trainable examples of one file, in row order, and why the other rows were dropped."""

    path: str
    examples: list[Encoded]
    rows: list[int]  # the source row number of each example
    rows_read: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason (DROPPED_*) -> rows

    def notes(self) -> list[str]:
        """One line for the training banner, when anything was dropped."""
        parts = [f"{n} {why}" for why, n in self.dropped.items() if n]
        return [f"{self.path}: dropped rows: " + ", ".join(parts)] if parts else []


def fit_rows(
    rows: Iterable[Row], tokenizer: Any, *, max_seq_len: int, train_on: TrainOn, progress: bool = False
) -> Iterator[Fitted]:
    """Render, mask and fit each row (rows with a conversation); adds the template, `too_long`,
    `answer_truncated` and `nothing_trained` findings to the rows; yields the rows the template
    encodes. `progress` shows a bar on stderr (templating and tokenizing are the slow part)."""
    rows = [r for r in rows if r.conversation is not None]
    encoded: Iterable[Encoded | TemplateError] = iter_encode(
        (r.conversation for r in rows),  # type: ignore[misc]
        tokenizer,
        train_on=train_on,
    )
    if progress:
        from rich.console import Console
        from rich.progress import track

        encoded = track(
            encoded,
            total=len(rows),
            description="templating + tokenizing",
            console=Console(stderr=True),
            transient=True,
        )
    for row, enc in zip(rows, encoded):
        if isinstance(enc, TemplateError):
            row.findings.append(Finding(enc.code, row.source, enc.message, enc.field))
            continue
        example, cut = enc.fit(max_seq_len)
        _cut_findings(row, enc, cut, max_seq_len, train_on)
        # Position 0 is never a target (the loss shifts by one), so it does not count as trained.
        if not cut.trained and not any(t != IGNORE_INDEX for t in example.labels[1:]):
            row.findings.append(
                Finding(
                    "nothing_trained",
                    row.source,
                    "no token of this row carries loss (every answer has weight 0, or train_on leaves none); "
                    "training drops it",
                )
            )
        yield Fitted(row, enc, example, cut)


def _cut_findings(row: Row, encoded: Encoded, cut: Cut, limit: int, train_on: TrainOn) -> None:
    if not cut.tokens:
        return
    n = len(encoded.input_ids)
    row.findings.append(
        Finding(
            "too_long",
            row.source,
            f"{n} tokens after templating, over max_seq_len={limit}; the last {n - limit} are cut",
        )
    )
    if cut.trained:
        # The cut takes the end of the row, so the last trained answer is the one it reaches first.
        answers = trained_indices(row.conversation.messages, train_on)  # type: ignore[union-attr]
        whole = "all" if cut.trained == encoded.n_trained else f"{cut.trained} of {encoded.n_trained}"
        message = (
            f"the max_seq_len={limit} cut removes {whole} trained answer tokens: the model would learn to "
            "start this answer and never finish it; training drops the row: shorten it or raise max_seq_len"
        )
        where = f"messages[{answers[-1]}].content" if answers else None
        row.findings.append(Finding("answer_truncated", row.source, message, where))


def prepare(settings: DataSettings, tokenizer: Any, path: str | Path) -> Prepared:
    """Read, validate, encode with `tokenizer`'s chat template (load it with the config's
    `model.chat_template`: `template.load_tokenizer`) and fit to `settings.max_seq_len`: the
    examples training uses, and how many rows were dropped for what. Raises DataError if the file
    cannot be read at all."""
    from tunesmith.data.validate import read_rows

    _, rows = read_rows(path, settings.format)
    readable = [r for r in rows if r.conversation is not None and not _has_error(r.findings)]
    fitted = list(fit_rows(readable, tokenizer, max_seq_len=settings.max_seq_len, train_on=settings.train_on))  # type: ignore[arg-type]
    kept = [f for f in fitted if f.kept]
    codes = [f.code for r in readable for f in r.findings if f.severity is Severity.ERROR]
    dropped = {
        DROPPED_DATA_ERROR: len(rows) - len(readable),
        DROPPED_TEMPLATE: len(readable) - len(fitted),
        DROPPED_ANSWER_CUT: codes.count("answer_truncated"),
        DROPPED_NOTHING_TRAINED: codes.count("nothing_trained"),
    }
    return Prepared(str(path), [f.example for f in kept], [f.row.source.row for f in kept], len(rows), dropped)


def _has_error(findings: list[Finding]) -> bool:
    return any(f.severity is Severity.ERROR for f in findings)
