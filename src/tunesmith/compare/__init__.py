"""The compare stage: a blind side-by-side sheet of the tuned model against the base model (or
another run), a local review page to vote on it, and unblinding with a win rate people can trust.

Files in RUN_DIR/compare/ (names in `tunesmith.runs`): `sheet.jsonl`, `sheet.csv`, `sheet.xlsx`
(what reviewers see), `key.json` (which side is which: never served), `votes/<reviewer>.json`,
`results.json` (after `unblind`).
"""

from tunesmith.compare.sheet import Sheet, build_sheet
from tunesmith.compare.unblind import Unblinded, unblind, wilson_interval
from tunesmith.compare.votes import cast_vote, import_sheet

__all__ = ["Sheet", "Unblinded", "build_sheet", "cast_vote", "import_sheet", "unblind", "wilson_interval"]
