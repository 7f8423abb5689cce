#!/usr/bin/env bash
# Side-by-side benchmarks: fraudlab next to the Python reference stack (PyTorch + transformers
# + peft, ../shared/reference/bench/; llama.cpp through llama-cpp-python for the quantized
# path), on the same machine, same model, same inputs, one run.
#
#   bench/compare.sh [speed|bf16|quant|train|score|generate|all]      (default: all)
#
#   speed     f32 prefill and greedy decode (p200, p428 prompts) against PyTorch f32
#   bf16      --dtype bf16: prefill, decode, score mode and the LoRA step against PyTorch bf16
#   quant     the GGUF Q4_K_M kept quantized: prefill and decode against llama.cpp
#   train     f32 LoRA step (batch 1 and 4) against PyTorch + peft f32
#   score     f32 score mode against PyTorch f32
#   generate  generate mode against transformers' generate
#
# Needs ../shared/reference (setup.sh fetches the real model and builds the Python venv once;
# `quant` also needs llama-cpp-python in that venv, see ../shared/reference/README.md).
# Machines are noisy: each measurement runs REPEAT times (default 2), the two stacks taking
# turns, and the best run of each side is kept. Prints the CPU line first, one JSON line per
# measurement and a ratio line per workload (fraudlab / reference, so above 1 is faster for
# throughputs; for step time and memory, below 1 is better). SCORE_N (default 200) samples in
# score mode; GEN_N (default 200) in generate mode.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
ref=$here/../shared/reference
[[ -d $ref ]] || { echo "bench: ../shared/reference is missing" >&2; exit 2; }
eval "$("$ref/bench/setup.sh")"
data=$here/../shared/data/fraud-dialogues/dialogues-dev.jsonl
what=${1:-all}
repeat=${REPEAT:-2}
score_n=${SCORE_N:-200}
cd "$here"
cargo build --release --example bench_engine >&2
B=$here/target/release/examples/bench_engine
export BENCH_NO_CPU_LINE=1
# the CPU first: model and flags as lscpu reports them, then what the kernels found and use
lscpu | grep -E '^(Model name|CPU family|Model):' | tr -s ' ' | paste -sd ' ' | sed 's/^/lscpu: /'
"$B" cpu 2>/dev/null
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) before the run; repeat $repeat"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 - "$ref/parity.json" "$tmp" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))["prompts"]
open(sys.argv[2] + "/p200.txt", "w").write(p["dev_chatml_score"]["text"])
open(sys.argv[2] + "/p428.txt", "w").write(p["dev_chatml_long"]["text"])
PY
ratio() { python3 -c "import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); print('  ratio', sys.argv[3], ' '.join(f'{k} {a[k]/b[k]:.2f}x' for k in sys.argv[4:] if b.get(k)))" "$@"; }
# best KEY MODE JSON...: the JSON line with the highest (max) or lowest (min) KEY
best() { python3 -c "import json,sys; k,m=sys.argv[1],sys.argv[2]; v=[json.loads(x) for x in sys.argv[3:]]; print(json.dumps((max if m=='max' else min)(v, key=lambda d: d.get(k, 0))))" "$@"; }
# pair KEY MODE 'REFERENCE COMMAND' 'FRAUDLAB COMMAND': runs both REPEAT times, taking turns;
# sets $ref_out and $us_out to the best run of each
pair() {
  local key=$1 mode=$2 rc=$3 uc=$4 r=() u=()
  for ((i = 0; i < repeat; i++)); do
    r+=("$(eval "$rc" 2>/dev/null)")
    u+=("$(eval "$uc")")
  done
  ref_out=$(best "$key" "$mode" "${r[@]}")
  us_out=$(best "$key" "$mode" "${u[@]}")
}
if [[ $what == speed || $what == all ]]; then
  for p in p200 p428; do
    pair prefill_tok_s max "'$REF_PY' '$ref/bench/speed.py' '$REF_HF' '$tmp/$p.txt' 64" \
      "'$B' speed '$REF_HF' '$tmp/$p.txt' 64"
    echo "speed $p python $ref_out"; echo "speed $p f32    $us_out"
    ratio "$us_out" "$ref_out" "speed $p f32/python-f32" prefill_tok_s decode_tok_s
  done
fi
if [[ $what == bf16 || $what == all ]]; then
  for p in p200 p428; do
    pair prefill_tok_s max "'$REF_PY' '$ref/bench/speed.py' '$REF_HF' '$tmp/$p.txt' 64 bf16" \
      "'$B' speed '$REF_HF' '$tmp/$p.txt' 64 --dtype bf16"
    echo "bf16 $p python $ref_out"; echo "bf16 $p ours   $us_out"
    ratio "$us_out" "$ref_out" "bf16 $p ours/python-bf16" prefill_tok_s decode_tok_s
  done
  pair samples_per_s max "'$REF_PY' '$ref/bench/score.py' '$REF_HF' '$data' $score_n bf16" \
    "'$B' score '$REF_HF' '$data' $score_n score 8 --dtype bf16"
  echo "bf16 score python $(echo "$ref_out" | cut -c1-160)"; echo "bf16 score ours   $(echo "$us_out" | cut -c1-160)"
  ratio "$us_out" "$ref_out" "bf16 score ours/python-bf16" samples_per_s
  pair step_s min "'$REF_PY' '$ref/bench/train_step.py' '$REF_HF' '$data' 4 3 bf16" \
    "'$B' train '$REF_HF' '$data' 4 3 --dtype bf16"
  echo "bf16 train batch 4 python $ref_out"; echo "bf16 train batch 4 ours   $us_out"
  ratio "$us_out" "$ref_out" "bf16 train batch 4 ours/python-bf16 (lower is better)" step_s rss_mib
fi
if [[ $what == quant || $what == all ]]; then
  if "$REF_PY" -c "import llama_cpp" 2>/dev/null; then
    for p in p200 p428; do
      pair decode_tok_s max "'$REF_PY' '$ref/bench/llama_speed.py' '$REF_GGUF' '$tmp/$p.txt' 64" \
        "'$B' speed '$REF_GGUF' '$tmp/$p.txt' 64 --quantized"
      echo "quant $p llama.cpp $ref_out"; echo "quant $p ours      $us_out"
      ratio "$us_out" "$ref_out" "quant $p ours/llama.cpp" prefill_tok_s decode_tok_s
    done
  else
    echo "quant: skipped (llama-cpp-python is not installed in $REF_PY; see ../shared/reference/README.md)"
  fi
fi
if [[ $what == train || $what == all ]]; then
  for b in 1 4; do
    pair step_s min "'$REF_PY' '$ref/bench/train_step.py' '$REF_HF' '$data' $b 3" \
      "'$B' train '$REF_HF' '$data' $b 3"
    echo "train batch $b python   $ref_out"; echo "train batch $b fraudlab $us_out"
    ratio "$us_out" "$ref_out" "train batch $b fraudlab/python (lower is better)" step_s rss_mib
  done
fi
if [[ $what == score || $what == all ]]; then
  pair samples_per_s max "'$REF_PY' '$ref/bench/score.py' '$REF_HF' '$data' $score_n" \
    "'$B' score '$REF_HF' '$data' $score_n score 8"
  echo "score python   $(echo "$ref_out" | cut -c1-200)"; echo "score fraudlab $(echo "$us_out" | cut -c1-200)"
  ratio "$us_out" "$ref_out" "score fraudlab/python" samples_per_s
fi
if [[ $what == generate || $what == all ]]; then
  # GEN_N samples (default 200; the Python side takes ~10 s a sample on 2 cores); run once
  n=${GEN_N:-200}
  py=$("$REF_PY" "$here/bench/py_generate.py" "$REF_HF" "$data" "$n" 2>/dev/null)
  us=$("$B" score "$REF_HF" "$data" "$n" generate 8)
  echo "generate python   $(echo "$py" | cut -c1-200)"; echo "generate fraudlab $(echo "$us" | cut -c1-200)"
  ratio "$us" "$py" "generate fraudlab/python" samples_per_s
  python3 -c "import json,sys; a=json.loads(sys.argv[1])['answers']; b=json.loads(sys.argv[2])['answers']; print('  same answers', sum(x==y for x,y in zip(a,b)), 'of', len(a))" "$us" "$py"
fi
