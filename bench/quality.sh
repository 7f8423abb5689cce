#!/usr/bin/env bash
# The one-hour recipe: a fraud classifier from a time budget of CPU training, measured on a
# test part nothing was selected on, with the zero-shot model beside it.
#
#   bench/quality.sh [OUT]            (default OUT: target/quality)
#
# Environment (all optional):
#   MODEL       model to fine-tune (default: $REF_HF, the reference f32 folder of
#               ../shared/reference/bench/setup.sh)
#   DATA        labelled dialogues (default: ../shared/data/fraud-dialogues/dialogues-dev.jsonl)
#   BUDGET      training time budget (default 60m; iterate with 15m)
#   LAYERS      LoRA layer range (default 12-23); LR (default 2e-4); BATCH (4); ACCUM (2);
#               MAX_LEN (384); LORA_R (8); SEED (0)
#   DTYPE       frozen base weights in f32 or bf16 (default f32); the test part is evaluated
#               in the same dtype the run trained and calibrated in
#   ANONYMIZE=1 train and evaluate with speakers renamed A, B… per dialogue
#   ZERO_SHOT=0 skip the zero-shot evaluation
#   REF_PY      a Python with scikit-learn: the lexical baseline (bench/lexical_baseline.py) is
#               printed beside, with both broken down by the dialogues' number of turns
#
# The data is split once, stratified by label: 75% train, 10% validation (the run validates and
# picks its threshold there), 15% test (at least 400 dialogues; only measured, never selected
# on). Prints the CPU line, wall time, samples seen, and precision / recall / F1 / ROC-AUC on the
# test part for the zero-shot model and the fine-tuned one; everything lands in OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/quality}
model=${MODEL:-${REF_HF:-}}
if [[ -z $model ]]; then
  echo 'quality: set MODEL (or run: eval "$(../shared/reference/bench/setup.sh)")' >&2
  exit 2
fi
data=${DATA:-../shared/data/fraud-dialogues/dialogues-dev.jsonl}
if [[ ! -f $data ]]; then
  echo "quality: $data not found (the development data lives in ../shared)" >&2
  exit 2
fi
budget=${BUDGET:-60m}
layers=${LAYERS:-12-23}
lr=${LR:-2e-4}
batch=${BATCH:-4}
accum=${ACCUM:-2}
max_len=${MAX_LEN:-384}
rank=${LORA_R:-8}
seed=${SEED:-0}
dtype=${DTYPE:-f32}
anon=()
anon_eval=()
if [[ ${ANONYMIZE:-0} == 1 ]]; then
  anon=(--anonymize-speakers)
  anon_eval=(--anonymize-speakers true)
fi

echo "cpu: $(lscpu | sed -n 's/^Model name: *//p')"
echo "cpu flags: $(grep -m1 -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
cargo build --release -q
fl=target/release/fraudlab
mkdir -p "$out"
"$fl" data split "$data" --out "$out/split" --train 0.75 --val 0.1 --test 0.15 --seed 0 >&2
test_n=$(wc -l < "$out/split/test.jsonl")
echo "split: $(wc -l < "$out/split/train.jsonl") train / $(wc -l < "$out/split/val.jsonl") validation / $test_n test"

run="$out/run${ANONYMIZE:+-anon}"
rm -rf "$run"
t0=$(date +%s)
"$fl" train --model "$model" --data "$out/split/train.jsonl" --val "$out/split/val.jsonl" \
  --out "$run" --time-budget "$budget" --layers "$layers" --lr "$lr" --lora-r "$rank" \
  --batch "$batch" --grad-accum "$accum" --max-len "$max_len" --seed "$seed" --dtype "$dtype" "${anon[@]}" \
  --json > "$run.log"
t1=$(date +%s)
python3 - "$run/summary.json" "$budget" $((t1 - t0)) <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
c = s.get("calibration") or {}
print(f"train: budget {sys.argv[2]}, wall {int(sys.argv[3])} s (training {s['train_s']:.0f} s, "
      f"setup {s['setup_s']:.0f} s, calibration {s['calibrate_s']:.0f} s), {s['steps']} steps, "
      f"{s['samples_seen']} samples seen, end: {s['end']}")
if c:
    print(f"validation: threshold {c['threshold']:.3f}, F1 {c['f1']:.3f}, ROC-AUC {c.get('roc_auc') or float('nan'):.3f}")
EOF

models=(--model "$model" --adapter "$run/adapter")
if [[ ${ZERO_SHOT:-1} == 1 ]]; then
  models=(--model "$model" --model "$model" --adapter - --adapter "$run/adapter")
fi
rm -rf "$out/sessions"
FRAUDLAB_SESSIONS="$out/sessions" \
  "$fl" eval "${models[@]}" --data "$out/split/test.jsonl" --dtype "$dtype" "${anon_eval[@]}" --json > "$out/test-eval.jsonl"
python3 - "$out/test-eval.jsonl" <<'EOF'
import json, sys
print(f"{'test part':<28} {'n':>4} {'precision':>9} {'recall':>7} {'F1':>6} {'ROC-AUC':>8}  threshold")
for line in open(sys.argv[1]):
    r = json.loads(line)
    who = "zero-shot" if not r.get("adapter") else "fine-tuned"
    rule = r.get("rule") or {}
    auc = r.get("roc_auc")
    print(f"{who:<28} {r['n']:>4} {r['precision']:>9.3f} {r['recall']:>7.3f} {r['f1']:>6.3f} "
          f"{(auc if auc is not None else float('nan')):>8.3f}  {rule.get('threshold', 0.5):.3f} ({rule.get('source', 'default')})")
EOF

if [[ -n ${REF_PY:-} ]] && "$REF_PY" -c 'import sklearn' 2>/dev/null; then
  echo
  "$REF_PY" bench/lexical_baseline.py "$out/split" "$out"/sessions/default/evals/*/predictions.jsonl
fi
