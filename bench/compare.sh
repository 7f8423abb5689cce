#!/usr/bin/env bash
# Side-by-side benchmarks: fraudlab next to the Python reference stack (PyTorch + transformers
# + peft, ../shared/reference/bench/), on the same machine, same model, same inputs, one run.
#
#   bench/compare.sh [speed|train|score|generate|all]      (default: all)
#
# Needs ../shared/reference (setup.sh fetches the real model and builds the Python venv once).
# Prints one JSON line per measurement and a ratio line per workload (fraudlab / Python, so
# above 1 is faster for throughputs; for step time and memory, below 1 is better).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
ref=$here/../shared/reference
[[ -d $ref ]] || { echo "bench: ../shared/reference is missing" >&2; exit 2; }
eval "$("$ref/bench/setup.sh")"
data=$here/../shared/data/fraud-dialogues/dialogues-dev.jsonl
what=${1:-all}
cd "$here"
cargo build --release --example bench_engine >&2
B=$here/target/release/examples/bench_engine
# the CPU first: model and flags as lscpu reports them, then what the kernels found and use
lscpu | grep -E '^(Model name|CPU family|Model):' | tr -s ' ' | paste -sd ' ' | sed 's/^/lscpu: /'
"$B" cpu 2>/dev/null
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 - "$ref/parity.json" "$tmp" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))["prompts"]
open(sys.argv[2] + "/p200.txt", "w").write(p["dev_chatml_score"]["text"])
open(sys.argv[2] + "/p428.txt", "w").write(p["dev_chatml_long"]["text"])
PY
ratio() { python3 -c "import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); print('  ratio', sys.argv[3], ' '.join(f'{k} {a[k]/b[k]:.2f}x' for k in sys.argv[4:] if b.get(k)))" "$@"; }
if [[ $what == speed || $what == all ]]; then
  for p in p200 p428; do
    py=$("$REF_PY" "$ref/bench/speed.py" "$REF_HF" "$tmp/$p.txt" 64 2>/dev/null)
    f32=$("$B" speed "$REF_HF" "$tmp/$p.txt" 64)
    q=$("$B" speed "$REF_GGUF" "$tmp/$p.txt" 64 --quantized)
    echo "speed $p python  $py"; echo "speed $p f32     $f32"; echo "speed $p quant   $q"
    ratio "$f32" "$py" "f32/python" prefill_tok_s decode_tok_s
    ratio "$q" "$py" "quantized/python-f32" prefill_tok_s decode_tok_s
  done
fi
if [[ $what == train || $what == all ]]; then
  for b in 1 4; do
    py=$("$REF_PY" "$ref/bench/train_step.py" "$REF_HF" "$data" $b 3 2>/dev/null)
    us=$("$B" train "$REF_HF" "$data" $b 3)
    echo "train batch $b python   $py"; echo "train batch $b fraudlab $us"
    ratio "$us" "$py" "fraudlab/python (lower is better)" step_s rss_mib
  done
fi
if [[ $what == score || $what == all ]]; then
  py=$("$REF_PY" "$ref/bench/score.py" "$REF_HF" "$data" 200 2>/dev/null)
  us=$("$B" score "$REF_HF" "$data" 200 score 8)
  echo "score python   $(echo "$py" | cut -c1-200)"; echo "score fraudlab $(echo "$us" | cut -c1-200)"
  ratio "$us" "$py" "score fraudlab/python" samples_per_s
fi
if [[ $what == generate || $what == all ]]; then
  # GEN_N samples (default 200; the Python side takes ~10 s a sample on 2 cores)
  n=${GEN_N:-200}
  py=$("$REF_PY" "$here/bench/py_generate.py" "$REF_HF" "$data" "$n" 2>/dev/null)
  us=$("$B" score "$REF_HF" "$data" "$n" generate 8)
  echo "generate python   $(echo "$py" | cut -c1-200)"; echo "generate fraudlab $(echo "$us" | cut -c1-200)"
  ratio "$us" "$py" "generate fraudlab/python" samples_per_s
  python3 -c "import json,sys; a=json.loads(sys.argv[1])['answers']; b=json.loads(sys.argv[2])['answers']; print('  same answers', sum(x==y for x,y in zip(a,b)), 'of', len(a))" "$us" "$py"
fi
