"""The plan as (label, value) lines: printed by `tunesmith plan` and before step 1 of `tunesmith train`."""

from __future__ import annotations

from typing import Any


def _gb(n: float) -> str:
    # GB for what matters on real models, MB for the tiny ones (0.00 GB says nothing).
    return f"{n / 1e9:,.2f} GB" if abs(n) >= 1e9 else f"{n / 1e6:,.1f} MB"


def memory_line(plan: Any) -> str:
    m = plan.memory
    parts = ", ".join(f"{k} {_gb(v)}" for k, v in sorted(m.terms.items(), key=lambda kv: -kv[1]) if abs(v) >= 5e4)
    return f"{_gb(m.total)} per device ({parts}); dominant: {', '.join(m.dominant()) or '-'}"


def plan_lines(plan: Any) -> list[tuple[str, str]]:
    s = plan.shape
    lines = [
        (
            "parameters",
            f"{plan.parameters:,}"
            + (
                f" ({plan.active_parameters:,} active per token, {s.experts} experts, top-{s.experts_per_token})"
                if s.experts
                else ""
            )
            + f"; {s.model_type}, {s.layers} layers, hidden {s.hidden_size}, {s.heads} heads / {s.kv_heads} kv, vocab {s.vocab_size:,}"
            + (", tied embeddings" if s.tied_embeddings else ""),
        ),
        ("trainable", f"{plan.trainable_parameters:,} ({plan.trainable_parameters / max(plan.parameters, 1):.2%})"),
        ("memory", memory_line(plan)),
        ("budget", f"{_gb(plan.fit.budget)} per device: {plan.device}" + (f" × {plan.gpus}" if plan.gpus > 1 else "")),
    ]
    setup = plan.setup
    if plan.fit.fits:
        lines.append(
            (
                "fits",
                f"yes: micro-batch {plan.fit.micro_batch} × accumulation {plan.fit.grad_accum} × {plan.gpus} device(s) "
                f"≥ effective batch {plan.effective_batch}, at {setup.seq_len} tokens",
            )
        )
    else:
        lines.append(("fits", f"NO: micro-batch 1 at {setup.seq_len} tokens needs {_gb(plan.memory.total)}"))
        for i, alt in enumerate(plan.alternatives, 1):
            lines.append((f"option {i}", f"{alt.change}: micro-batch {alt.micro_batch}, {_gb(alt.total)} ({alt.why})"))
        if not plan.alternatives:
            lines.append(
                (
                    "option",
                    "none of QLoRA, gradient checkpointing, 64 GPUs or 128-token sequences fits: a smaller model",
                )
            )
    if plan.time is not None:
        t = plan.time
        cost = f", ~${t.cost:,.2f}" if t.cost is not None else ""
        lines.append(
            (
                "time",
                f"{t.tokens_per_epoch:,} tokens/epoch × {t.epochs:g} epochs, {t.steps:,} steps: ~{t.hours:,.2f} h on "
                f"{t.gpus} × {t.gpu} at {t.mfu:.0%} of peak{cost}",
            )
        )
    lines.append(("licence", f"{plan.license.cls} ({plan.license.source}): {plan.license.why}"))
    lines.append(("model kind", f"{plan.kind.kind}: {plan.kind.advice}"))
    lines.extend(("note", n) for n in plan.notes)
    return lines
