"""The evaluation stage: generate answers for held-out prompts, score them with suites.

- `generate.generate(model, tokenizer, prompts, GenerationConfig)`: batched answers (reused by the
  judge, `serve`, `compare`); `load_tuned(run_dir, config)` / `load_base(config)` load the models.
- `runner.evaluate_run(run_dir)`: `tunesmith eval RUN_DIR`; `score.score_file(path, suite, config)`:
  `tunesmith eval score FILE`. Both score through `runner.score_rows` and the suite registry
  (`suites/`, one module per suite).

Files in a run directory (runs.EVAL_DIR): `tuned.jsonl` and `base.jsonl`, one row per example
(`id`, `prompt` messages, `output`, `reference`, `stopped`, `new_tokens`, `scores` {suite: per-row
result}, `metadata`), and `summary.json`: `split`, `source`, `n`, `suites`, `generation`,
`models` {"tuned"/"base": {`path`, `unstopped`, `scores` {suite: the suite's summary keys}}},
`findings`, and `regression` once the regression check is wired in. `compare` and `report` read them.
"""
