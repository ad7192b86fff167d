"""Unblinding: map every vote back through the key and say how often the tuned model won.

Win rate = tuned wins / (wins + losses), ties reported beside it rather than folded in (a tie is
"no preference", not half a win: folding would pull every rate towards 50%). The 95% interval is
Wilson's score interval (scipy's `binomtest(...).proportion_ci(method="wilson")`), which keeps its
coverage at the small counts a blind review has, where the normal approximation says "0% ± 0%"
after 10 losses out of 10. Every vote counts once: with several reviewers the same prompt is
counted once per reviewer, so the interval is somewhat narrower than independent prompts would
give; the per-reviewer rows and their agreement show whether that matters.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from tunesmith.compare.sheet import TUNED, eval_rows, read_key
from tunesmith.compare.votes import all_votes
from tunesmith.runs import COMPARE_DIR, UNBLIND_FILE, write_json

WIN, LOSS, TIE = "win", "loss", "tie"  # from the tuned model's point of view, as the judge reports
CONFIDENCE = 0.95


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion; None when there are no trials."""
    if n == 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two raters over the same items; None when it is undefined (fewer than
    two items, or both raters gave one and the same label throughout: chance agreement is 1)."""
    if len(a) < 2 or len(set(a) | set(b)) < 2:
        return None
    from sklearn.metrics import cohen_kappa_score

    return float(cohen_kappa_score(a, b))


@dataclass
class Tally:
    wins: int = 0
    losses: int = 0
    ties: int = 0
    skips: int = 0
    win_rate: float | None = None  # wins / (wins + losses)
    ci95: tuple[float, float] | None = None
    tie_rate: float | None = None  # ties / (wins + losses + ties)

    def add(self, outcome: str) -> None:
        if outcome == WIN:
            self.wins += 1
        elif outcome == LOSS:
            self.losses += 1
        elif outcome == TIE:
            self.ties += 1
        else:
            self.skips += 1

    def finish(self) -> Tally:
        decisive = self.wins + self.losses
        self.win_rate = self.wins / decisive if decisive else None
        self.ci95 = wilson_interval(self.wins, decisive)
        voted = decisive + self.ties
        self.tie_rate = self.ties / voted if voted else None
        return self


@dataclass
class Unblinded:
    run: str
    against: str
    items: int
    reviewers: list[str]
    complete: dict[str, int]  # reviewer -> items voted (skips included)
    overall: Tally
    per_reviewer: dict[str, Tally]
    per_stratum: dict[str, Tally]
    reviewer_agreement: list[dict[str, Any]] = field(default_factory=list)
    judge_agreement: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def outcome(choice: str, tuned_side: str) -> str:
    """A vote for side A/B/tie/skip as win/loss/tie/skip for the tuned model."""
    if choice in ("A", "B"):
        return WIN if choice == tuned_side else LOSS
    return choice if choice in (TIE, "skip") else "skip"


def unblind(run_dir: str | Path, *, write: bool = True) -> Unblinded:
    """Count every reviewer's votes through the key; write RUN_DIR/compare/results.json."""
    run_dir = Path(run_dir)
    key = read_key(run_dir)
    items = key["items"]
    tuned_side = {item: ("A" if k["A"] == TUNED else "B") for item, k in items.items()}
    votes = all_votes(run_dir)
    overall, per_reviewer, per_stratum = Tally(), {}, defaultdict(Tally)
    labels: dict[str, dict[str, str]] = {}  # reviewer -> item -> outcome (skips left out)
    notes: list[str] = []
    for reviewer, vs in votes.items():
        tally = per_reviewer.setdefault(reviewer, Tally())
        for item, vote in vs.items():
            if item not in items:
                notes.append(f"{reviewer}: vote for item {item} that is not on the sheet, ignored")
                continue
            result = outcome(vote.get("choice", "skip"), tuned_side[item])
            for t in (overall, tally, per_stratum[items[item].get("stratum") or "(none)"]):
                t.add(result)
            if result != "skip":
                labels.setdefault(reviewer, {})[item] = result
    agreement = []
    for r1, r2 in combinations(sorted(labels), 2):
        shared = sorted(set(labels[r1]) & set(labels[r2]))
        a, b = [labels[r1][i] for i in shared], [labels[r2][i] for i in shared]
        agreement.append(
            {
                "reviewers": [r1, r2],
                "items": len(shared),
                "agreement": sum(x == y for x, y in zip(a, b)) / len(shared) if shared else None,
                "kappa": cohen_kappa(a, b),
            }
        )
    result = Unblinded(
        run=key.get("run", run_dir.name),
        against=key.get("against", "base"),
        items=len(items),
        reviewers=sorted(votes),
        complete={r: sum(1 for i in vs if i in items) for r, vs in votes.items()},
        overall=overall.finish(),
        per_reviewer={r: t.finish() for r, t in per_reviewer.items()},
        per_stratum={s: t.finish() for s, t in sorted(per_stratum.items())} if set(per_stratum) != {"(none)"} else {},
        reviewer_agreement=agreement,
        judge_agreement=_judge_agreement(run_dir, key, labels, notes),
        notes=notes,
    )
    if write:
        write_json(run_dir / COMPARE_DIR / UNBLIND_FILE, result.to_json())
    return result


def _judge_agreement(
    run_dir: Path, key: dict[str, Any], labels: dict[str, dict[str, str]], notes: list[str]
) -> dict[str, Any] | None:
    """How often the people agree with the LLM judge's pairwise verdict on the same prompt.

    The judge compared tuned against base; against another run its verdicts answer a different
    question, so they are left out."""
    if key.get("against") != "base":
        return None
    try:
        rows = eval_rows(run_dir, "tuned")
    except Exception:  # no eval outputs (a sheet copied elsewhere): nothing to compare with
        return None
    verdicts = {}
    for row in rows:
        judge = (row.get("scores") or {}).get("judge") or {}
        if judge.get("verdict") in (WIN, LOSS, TIE):
            verdicts[str(row.get("id"))] = judge["verdict"]
    if not verdicts:
        return None
    human, machine = [], []
    for per_item in labels.values():
        for item, result in per_item.items():
            verdict = verdicts.get(str(key["items"][item]["id"]))
            if verdict is not None:
                human.append(result)
                machine.append(verdict)
    if not human:
        if labels:
            notes.append("the judge gave pairwise verdicts, but on none of the items people voted on")
        return None
    return {
        "votes": len(human),
        "agreement": sum(h == m for h, m in zip(human, machine)) / len(human),
        "kappa": cohen_kappa(human, machine),
        "judge": dict(Counter(machine)),
        "people": dict(Counter(human)),
    }


def format_results(r: Unblinded) -> list[str]:
    """The results as plain lines for the console."""

    def line(name: str, t: Tally) -> str:
        rate = "n/a" if t.win_rate is None else f"{t.win_rate:.0%}"
        ci = f" [95% CI {t.ci95[0]:.0%}-{t.ci95[1]:.0%}]" if t.ci95 else ""
        return f"{name}: tuned wins {t.wins}, loses {t.losses}, ties {t.ties}, skipped {t.skips}; win rate {rate}{ci}"

    out = [
        f"blind review of {r.run} against {r.against}: {r.items} items, reviewers: {', '.join(r.reviewers) or 'none'}"
    ]
    out.append(line("all votes", r.overall))
    out += [line(f"  reviewer {name}", t) for name, t in sorted(r.per_reviewer.items())]
    out += [line(f"  stratum {name}", t) for name, t in r.per_stratum.items()]
    for a in r.reviewer_agreement:
        if a["items"]:
            kappa = "n/a" if a["kappa"] is None else f"{a['kappa']:.2f}"
            out.append(
                f"agreement {a['reviewers'][0]} / {a['reviewers'][1]}: {a['agreement']:.0%} on {a['items']} items, kappa {kappa}"
            )
    if r.judge_agreement:
        j = r.judge_agreement
        kappa = "n/a" if j["kappa"] is None else f"{j['kappa']:.2f}"
        out.append(f"agreement with the LLM judge: {j['agreement']:.0%} of {j['votes']} votes, kappa {kappa}")
    out += [f"note: {n}" for n in r.notes]
    if not r.reviewers:
        out.append("no votes yet: vote with `tunesmith review RUN_DIR`, or fill in sheet.xlsx and pass it to --import")
    return out
