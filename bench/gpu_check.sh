#!/usr/bin/env bash
# The distributed paths on a GPU machine, in one run: DDP (torchrun), FSDP2 and DeepSpeed ZeRO-2/3
# (accelerate launch with the shipped configs), each against a single-process run of the same
# config. Prints one line per path: step-1 loss, final validation loss and their relative
# difference from the single-process run, and whether final/ was exported; exits 1 if any failed.
#
#   bash bench/gpu_check.sh                 # all visible GPUs (NPROC=2 to use two)
#   PATHS="fsdp deepspeed_zero2" bash bench/gpu_check.sh
#
# Needs: CUDA, `pip install deepspeed` for the ZeRO paths (skipped, and said, without it).
# Run from the repository root. Everything goes under ${OUT:-/tmp/tunesmith-gpu-check}.
# What has run where is in README.md ("Several processes").
set -uo pipefail

PY=${PY:-python}
OUT=${OUT:-/tmp/tunesmith-gpu-check}
NPROC=${NPROC:-$($PY -c "import torch; print(max(1, torch.cuda.device_count()))")}
PATHS=${PATHS:-"ddp fsdp deepspeed_zero2 deepspeed_zero3"}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"

# ALLOW_CPU=1 PATHS=ddp NPROC=2: a dry run of this script's own machinery on a CPU machine.
if [ -z "${ALLOW_CPU:-}" ]; then
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script checks the GPU paths')" || exit 2
  echo "GPUs: $($PY -c "import torch; print(torch.cuda.device_count(), torch.cuda.get_device_name(0))"), processes: $NPROC"
fi

# A tiny Llama and a learnable data set, built once.
if [ ! -f "$OUT/model/config.json" ]; then
  $PY - "$OUT" <<'PYEOF'
import random, sys
from pathlib import Path
from tunesmith.models.tiny import build_tiny_model, texts_from_jsonl
from tunesmith.runs import write_jsonl
out = Path(sys.argv[1])
rng = random.Random(0)
words = ["apple", "sky", "grass", "snow", "coal", "sun", "rose", "sea"]
colours = ["red", "blue", "green", "white", "black", "yellow", "red", "blue"]
rows = []
for _ in range(256):
    i = rng.randrange(len(words))
    pad = " ".join(rng.choice(words) for _ in range(rng.randint(0, 6)))
    rows.append({"messages": [{"role": "user", "content": f"{pad} what colour is {words[i]}?"},
                              {"role": "assistant", "content": colours[i]}]})
write_jsonl(out / "data.jsonl", rows)
build_tiny_model(out / "model", texts=texts_from_jsonl(out / "data.jsonl"), vocab_size=320, hidden_size=64,
                 layers=2, heads=2, kv_heads=1, intermediate_size=128, max_position_embeddings=128)
PYEOF
fi

printf 'model:\n  name_or_path: %s\n  dtype: float32\ndata:\n  path: %s\n' "$OUT/model" "$OUT/data.jsonl" >"$OUT/config.yaml"
COMMON=("$OUT/config.yaml" runs_dir="$OUT/runs" train.method=full train.lr=1e-3 train.epochs=1 train.effective_batch=16 train.micro_batch=4
        train.mixed_precision=fp32 train.report_to=[] train.early_stopping_patience=0 train.resume=never)
rm -rf "$OUT/runs"
run() {  # name, then the launcher arguments
  local name=$1; shift
  echo "--- $name: $*" >"$OUT/$name.log"
  $PY -m tunesmith.cli.main train "${COMMON[@]}" name="$name" "$@" >>"$OUT/$name.log" 2>&1
}
run single
status=0
for path in $PATHS; do
  case $path in
    ddp) run ddp --num-processes "$NPROC" ;;
    deepspeed_*)
      if ! $PY -c "import deepspeed" 2>/dev/null; then echo "$path: skipped (pip install deepspeed)"; continue; fi
      run "$path" --num-processes "$NPROC" --launcher accelerate --accelerate-config "$path" ;;
    *) run "$path" --num-processes "$NPROC" --launcher accelerate --accelerate-config "$path" ;;
  esac
  $PY - "$OUT" "$path" <<'PYEOF' || status=1
import json, sys
from pathlib import Path
out, name = Path(sys.argv[1]), sys.argv[2]
def rows(n):
    path = out / "runs" / n / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
ref, got = rows("single"), rows(name)
if not got:
    print(f"{name}: FAILED, no metrics (see {out / (name + '.log')})"); sys.exit(1)
first = lambda r: next(x["loss"] for x in r if "loss" in x)
last_val = lambda r: [x["val_loss"] for x in r if "val_loss" in x][-1]
d1 = abs(first(got) - first(ref)) / first(ref)
dv = abs(last_val(got) - last_val(ref)) / last_val(ref)
final = (out / "runs" / name / "final" / "model.safetensors").exists()
ok = d1 < 2e-2 and dv < 5e-2 and final  # the shipped FSDP/DeepSpeed configs compute in bf16
print(f"{name}: step-1 loss {first(got):.5f} (single {first(ref):.5f}, rel {d1:.1e}); final val loss "
      f"{last_val(got):.5f} (single {last_val(ref):.5f}, rel {dv:.1e}); final/ exported: {final}; {'OK' if ok else 'FAILED'}")
sys.exit(0 if ok else 1)
PYEOF
done
exit $status
