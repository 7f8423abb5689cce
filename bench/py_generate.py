"""The Python stack's generate-mode evaluation, for bench/compare.sh: greedy answers to the
chat prompt (system + instruction + dialogue), batches of 8 left-padded prompts, up to 64 new
tokens, `is_fraud` parsed from the first JSON object of each answer.
usage: py_generate.py HF_FOLDER DATA_JSONL N -> JSON {"n","samples_per_s","unparseable","precision","recall","answers"}"""
import json, re, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(2)
folder, data, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(folder); tok.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
rows = [json.loads(l) for l in open(data, encoding="utf-8")][:n]
def prompt(r):
    return tok.apply_chat_template([{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": r["instruction"] + r["input"]}], tokenize=False, add_generation_prompt=True)
def parse(a):
    m = re.search(r"\{[^{}]*\}", a)
    try:
        v = json.loads(m.group(0)) if m else None
    except ValueError:
        v = None
    return v.get("is_fraud") if isinstance(v, dict) and isinstance(v.get("is_fraud"), bool) else None
answers = []; t0 = time.perf_counter()
with torch.inference_mode():
    for i in range(0, len(rows), 8):
        enc = tok([prompt(r) for r in rows[i:i + 8]], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**enc, do_sample=False, max_new_tokens=64, pad_token_id=tok.pad_token_id,
                             top_p=None, top_k=None, temperature=None)
        answers += tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
dt = time.perf_counter() - t0
pred = [parse(a) for a in answers]; y = [bool(r["label"]) for r in rows]
tp = sum(1 for a, b in zip(y, pred) if a and b is True); fp = sum(1 for a, b in zip(y, pred) if not a and b is True)
fn = sum(1 for a, b in zip(y, pred) if a and b is not True)
print(json.dumps({"n": len(rows), "samples_per_s": len(rows) / dt, "unparseable": sum(p is None for p in pred),
                  "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
                  "answers": answers}, ensure_ascii=False))
