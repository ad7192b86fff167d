"""The evaluation stage: generate answers for held-out prompts, score them with suites.

Files in a run directory (runs.EVAL_DIR): `tuned.jsonl` and `base.jsonl`, one row per example
(`id`, `prompt` messages, `output`, `reference`, `stopped`, `scores` per suite, `metadata`), and
`summary.json` (per model, per suite: the suite's summary keys). `compare` and `report` read them.
"""
