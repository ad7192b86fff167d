"""Should you fine-tune at all? Deterministic rules over a few facts about the task.

The rules, in the order they are applied (each fires or not; every recommendation carries the
rules that led to it):
- R1 fresh facts: answers need information newer than the model or that changes → RAG. Fine-tuning
  teaches form and behaviour, not facts that change; a retriever can be updated tomorrow.
- R2 citations: answers must cite sources → RAG (a fine-tuned model cannot point at its evidence).
- R3 changing requirements: the instructions change weekly or more often → prompting: a prompt
  changes in minutes, a fine-tune freezes today's requirements into weights.
- R4 few examples: under MIN_FINETUNE_EXAMPLES good examples → in-context examples (few-shot);
  fine-tuning on a few dozen rows memorises them.
- R5 format: a strict output format (or a style the prompt cannot hold) with enough examples and
  stable requirements → fine-tuning: it makes the format the default instead of a request.
- R6 cost at scale: instruction tokens × requests per month × price. When fine-tuning would remove
  long instructions from every request and that saves more per month than COST_WORTH_IT, with
  enough examples and stable requirements → fine-tuning (it pays for itself).
- R7 default: nothing above calls for more → prompting first, measured on a held-out set.
Fine-tuning with RAG is recommended when R1/R2 and R5/R6 both fire: retrieval brings the facts,
fine-tuning the format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Change = Literal["rarely", "monthly", "weekly", "daily"]
Consistency = Literal["loose", "moderate", "strict"]

MIN_FINETUNE_EXAMPLES = 100  # below this, few-shot prompting; LoRA on fewer rows mostly memorises
GOOD_FINETUNE_EXAMPLES = 1000  # from here, fine-tuning is comfortable
LONG_PROMPT_TOKENS = 1000  # instructions this long are worth moving into weights at volume
COST_WORTH_IT = 100.0  # US$ saved per month that makes removing instructions worthwhile


@dataclass(frozen=True)
class Task:
    """Facts about the task that the rules read."""

    requirements_change: Change = "rarely"
    examples: int = 0  # good, reviewed input→output examples
    fresh_facts: bool = False  # answers need information that is newer than the model or changes
    citations: bool = False  # answers must cite their sources
    format_consistency: Consistency = "moderate"
    requests_per_month: int = 0
    instruction_tokens: int = 0  # tokens of instructions + in-context examples sent with every request
    price_per_million: float = 0.0  # US$ per million input tokens on the model that serves it


@dataclass(frozen=True)
class Reason:
    rule: str  # "R1".."R7"
    says: str  # "rag", "prompting", "in-context examples", "fine-tuning"
    why: str


@dataclass
class Advice:
    recommendation: list[str]  # in order of what to do first
    reasons: list[Reason]
    monthly_instruction_cost: float  # US$: instruction tokens × requests × price
    yearly_instruction_cost: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "recommendation": self.recommendation,
            "reasons": [r.__dict__ for r in self.reasons],
            "monthly_instruction_cost": self.monthly_instruction_cost,
            "yearly_instruction_cost": self.yearly_instruction_cost,
            "notes": self.notes,
        }


def instruction_cost(task: Task) -> float:
    """US$ per month spent sending the instructions: tokens × requests × price per token."""
    return task.instruction_tokens * task.requests_per_month * task.price_per_million / 1e6


def advise(task: Task) -> Advice:
    """Apply the rules (module docstring) to `task`; same task, same advice."""
    reasons: list[Reason] = []
    monthly = instruction_cost(task)
    stable = task.requirements_change in ("rarely", "monthly")
    enough = task.examples >= MIN_FINETUNE_EXAMPLES
    if task.fresh_facts:
        reasons.append(
            Reason(
                "R1",
                "rag",
                "answers need fresh or changing facts: retrieval brings them, fine-tuning cannot keep them current",
            )
        )
    if task.citations:
        reasons.append(Reason("R2", "rag", "answers must cite sources: only retrieval can point at the evidence"))
    if not stable:
        reasons.append(
            Reason(
                "R3",
                "prompting",
                f"requirements change {task.requirements_change}: a prompt changes in minutes, a fine-tune freezes them",
            )
        )
    if not enough:
        reasons.append(
            Reason(
                "R4",
                "in-context examples",
                f"{task.examples} good examples (< {MIN_FINETUNE_EXAMPLES}): put the best few in the prompt; too few to fine-tune on",
            )
        )
    if task.format_consistency == "strict" and enough and stable:
        reasons.append(
            Reason(
                "R5",
                "fine-tuning",
                "a strict format with enough examples: fine-tuning makes it the default, not a request",
            )
        )
    if enough and stable and task.instruction_tokens >= LONG_PROMPT_TOKENS and monthly >= COST_WORTH_IT:
        reasons.append(
            Reason(
                "R6",
                "fine-tuning",
                f"{task.instruction_tokens:,} instruction tokens × {task.requests_per_month:,} requests/month = "
                f"${monthly:,.0f}/month that a fine-tune would mostly remove",
            )
        )
    says = [r.says for r in reasons]
    recommendation: list[str] = []
    if "rag" in says:
        recommendation.append("rag")
    if "fine-tuning" in says:
        recommendation.append("fine-tuning")
    elif "in-context examples" in says:
        recommendation.append("in-context examples")
    if "prompting" in says and "fine-tuning" not in recommendation:
        recommendation.insert(0, "prompting")
    if not recommendation:
        reasons.append(
            Reason(
                "R7",
                "prompting",
                "nothing calls for more: start with a good prompt and measure it on held-out examples",
            )
        )
        recommendation.append("prompting")
    notes = []
    if "fine-tuning" in recommendation and task.examples < GOOD_FINETUNE_EXAMPLES:
        notes.append(
            f"{task.examples} examples is enough for LoRA; {GOOD_FINETUNE_EXAMPLES}+ reviewed ones make it robust"
        )
    if "fine-tuning" in recommendation:
        notes.append("next: `tunesmith plan --model …` (will it fit, what will it cost), then `tunesmith data check`")
    return Advice(recommendation, reasons, round(monthly, 2), round(12 * monthly, 2), notes)
