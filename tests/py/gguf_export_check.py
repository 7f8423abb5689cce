"""Reads fraudlab's GGUF exports with the tools llama.cpp users have; prints JSON for
tests/export_llama_cpp.rs to check.

  gguf FILE            what Python's `gguf` package reads: keys (and the name of the file
                       type in its LlamaFileType table), tensors, tokenizer
  requant F32 OTHER    OTHER's f16 / Q8_0 tensors against `gguf.quants.quantize` of F32's
  llama FILE PROMPTS N llama.cpp (llama-cpp-python) on FILE: for each prompt of the JSON list
                       PROMPTS, its token ids, the top 10 last-position logits and N greedy
                       tokens
"""

import json
import sys


def read_gguf(path):
    from gguf import GGUFReader

    r = GGUFReader(path)

    def val(key):
        f = r.fields.get(key)
        if f is None:
            return None
        if f.types and f.types[0].name == "ARRAY":
            return {"array_of": f.types[-1].name, "len": len(f.data)}
        return f.contents()

    keys = {k: val(k) for k in r.fields if not k.startswith("GGUF.")}
    ftype = keys.get("general.file_type")
    if ftype is not None:
        from gguf import LlamaFileType

        name = LlamaFileType(ftype).name
        keys["file_type_name"] = name.removeprefix("MOSTLY_").removeprefix("ALL_")
    toks = r.fields["tokenizer.ggml.tokens"]
    types = r.fields["tokenizer.ggml.token_type"]
    return {
        "keys": keys,
        "key_types": {k: [t.name for t in f.types] for k, f in r.fields.items()},
        "tensors": [
            {"name": t.name, "shape": [int(x) for x in t.shape], "type": t.tensor_type.name}
            for t in r.tensors
        ],
        "tokens_head": [toks.contents(i) for i in range(min(5, len(toks.data)))],
        "token_types": [int(types.contents(i)) for i in range(len(types.data))],
        "tokens": [toks.contents(i) for i in range(len(toks.data))],
    }


def requant(f32_path, other_path):
    import numpy as np
    from gguf import GGUFReader, GGMLQuantizationType
    from gguf.quants import quantize

    src = {t.name: t for t in GGUFReader(f32_path).tensors}
    checked, differ = 0, []
    for t in GGUFReader(other_path).tensors:
        if t.tensor_type not in (GGMLQuantizationType.F16, GGMLQuantizationType.Q8_0):
            continue
        s = src[t.name]
        rows = np.asarray(s.data, dtype=np.float32).reshape(int(s.shape[1]), int(s.shape[0]))
        want = quantize(rows, t.tensor_type).tobytes()
        if bytes(np.asarray(t.data).tobytes()) != want:
            differ.append(t.name)
        checked += 1
    return {"checked": checked, "differ": differ}


def llama(path, prompts, n_greedy):
    import numpy as np
    from llama_cpp import Llama

    # an f32 KV cache: llama.cpp keeps f16 by default, which would blur the comparison
    llm = Llama(
        model_path=path, n_ctx=512, logits_all=True, verbose=False, n_threads=2, type_k=0, type_v=0
    )
    out = []
    for p in prompts:
        ids = llm.tokenize(p.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        top = np.argsort(-last, kind="stable")[:10]
        greedy = []
        for _ in range(n_greedy):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            greedy.append(nxt)
            llm.eval([nxt])
        out.append(
            {
                "ids": [int(i) for i in ids],
                "top": [[int(i), float(last[i])] for i in top],
                "greedy": greedy,
            }
        )
    return out


def main():
    mode = sys.argv[1]
    if mode == "gguf":
        res = read_gguf(sys.argv[2])
    elif mode == "requant":
        res = requant(sys.argv[2], sys.argv[3])
    elif mode == "llama":
        with open(sys.argv[3], encoding="utf-8") as f:
            prompts = json.load(f)
        res = llama(sys.argv[2], prompts, int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    json.dump(res, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
