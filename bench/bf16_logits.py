"""PyTorch's own bf16 error: last-position logits of each prompt file with the model in bf16
against the same model in f32 (2 threads). The bound fraudlab's `--dtype bf16` is held to.
usage: bf16_logits.py HF_FOLDER PROMPT_FILE... -> one JSON line per prompt:
{"tokens", "max_abs", "rms", "top1_same", "f32_top1"} (max_abs and rms over the whole vocabulary)"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(2)
folder, files = sys.argv[1], sys.argv[2:]
tok = AutoTokenizer.from_pretrained(folder)
models = {dt: AutoModelForCausalLM.from_pretrained(folder, dtype=dt).eval() for dt in (torch.float32, torch.bfloat16)}
for f in files:
    ids = tok(open(f, encoding="utf-8").read(), add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        a, b = (models[dt](torch.tensor([ids])).logits[0, -1].double() for dt in (torch.float32, torch.bfloat16))
    d = (a - b).abs()
    print(json.dumps({"tokens": len(ids), "max_abs": d.max().item(), "rms": d.pow(2).mean().sqrt().item(),
                      "top1_same": bool(a.argmax() == b.argmax()), "f32_top1": int(a.argmax())}), flush=True)
