#!/usr/bin/env python3
"""A lexical floor for the fraud classifier: what a bag of character n-grams reaches on the
same split that bench/quality.sh measures the fine-tuned model on, and where both go wrong.

    $REF_PY bench/lexical_baseline.py SPLIT_DIR [PREDICTIONS.jsonl ...]

SPLIT_DIR is the folder `fraudlab data split` wrote (train.jsonl, val.jsonl, test.jsonl;
bench/quality.sh leaves it in OUT/split). The baseline is TF-IDF over character 1-3-grams of
the dialogue and a logistic regression; its regularisation and decision threshold are chosen on
val.jsonl only (F1-best), then it is measured once on test.jsonl.

Each PREDICTIONS.jsonl (an evaluation's predictions.jsonl from `fraudlab eval`, under
sessions/<name>/evals/<id>/) is joined to the test part by sample id and broken down the same
way: by the number of turns in the dialogue, at the threshold the evaluation used. The
breakdown is diagnosis only: nothing here is selected on the test part.

Needs numpy and scikit-learn in the interpreter (`$REF_PY -m pip install scikit-learn`).
"""
import hashlib
import json
import sys

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

BUCKETS = ((1, 2), (3, 5), (6, 10), (11, 10**6))


def load(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                x = json.loads(line)
                out.append((x["instruction"], x["input"], bool(x["label"])))
            except (ValueError, KeyError) as e:
                sys.exit(f"{path}:{n}: not a labelled fraud dialogue ({e})")
    return out


def sample_id(instruction, text):
    # fraudlab's content id of a fraud sample (Sample::compute_id in src/data/dataset/sample.rs):
    # SHA-256 of `instruction \n input`, 16 hex
    return hashlib.sha256(f"{instruction}\n{text}".encode()).hexdigest()[:16]


def turns(text):
    return sum(1 for line in text.split("\n") if line.strip())


def row(name, y, p, pred):
    auc = roc_auc_score(y, p) if p is not None and 0 < y.sum() < len(y) else float("nan")
    return (f"{name:<34} {len(y):>4} {precision_score(y, pred, zero_division=0):>9.3f} "
            f"{recall_score(y, pred, zero_division=0):>7.3f} {f1_score(y, pred, zero_division=0):>6.3f} {auc:>8.3f}")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    split = sys.argv[1]
    train, val, test = (load(f"{split}/{n}.jsonl") for n in ("train", "val", "test"))
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    x_train = vec.fit_transform([t for _, t, _ in train])
    y_train = np.array([l for _, _, l in train])
    x_val = vec.transform([t for _, t, _ in val])
    y_val = np.array([l for _, _, l in val])
    best = None
    grid = np.linspace(0.02, 0.98, 97)
    for c in (1.0, 4.0, 16.0, 64.0):
        m = LogisticRegression(C=c, max_iter=5000).fit(x_train, y_train)
        pv = m.predict_proba(x_val)[:, 1]
        f1s = [f1_score(y_val, pv >= t) for t in grid]
        i = int(np.argmax(f1s))
        if best is None or f1s[i] > best[0]:
            best = (f1s[i], c, grid[i], m)
    val_f1, c, threshold, model = best
    y = np.array([l for _, _, l in test])
    p = model.predict_proba(vec.transform([t for _, t, _ in test]))[:, 1]
    n_turns = np.array([turns(t) for _, t, _ in test])
    print(f"lexical baseline: char 1-3-gram TF-IDF + logistic regression, C {c:g}, "
          f"threshold {threshold:.2f} (val F1 {val_f1:.3f}, {len(val)} dialogues)")
    print(f"{'test part':<34} {'n':>4} {'precision':>9} {'recall':>7} {'F1':>6} {'ROC-AUC':>8}")
    print(row("lexical", y, p, p >= threshold))

    ids = {sample_id(i, t): k for k, (i, t, _) in enumerate(test)}
    others = []
    for path in sys.argv[2:]:
        by_model = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                k = ids.get(r["id"])
                if k is None or r.get("probability") is None:
                    continue
                key = r.get("adapter") or r.get("model") or path
                by_model.setdefault(key, {})[k] = (r["probability"], bool(r.get("predicted")))
        for key, got in by_model.items():
            if len(got) != len(test):
                print(f"{path}: {key}: {len(got)} of {len(test)} test dialogues (not this split?)")
                continue
            q = np.array([got[k][0] for k in range(len(test))])
            d = np.array([got[k][1] for k in range(len(test))])
            name = key if len(key) <= 34 else "…" + key[-33:]
            print(row(name, y, q, d))
            others.append((name, q, d))

    print("\nby turns in the dialogue (diagnosis only)")
    for lo, hi in BUCKETS:
        s = (n_turns >= lo) & (n_turns <= hi)
        if not s.any():
            continue
        span = f"{lo}-{hi}" if hi < 10**6 else f"{lo}+"
        print(f"  {span} turns: {s.sum()} dialogues, {y[s].sum()} fraud")
        print("  " + row("lexical", y[s], p[s], p[s] >= threshold))
        for name, q, d in others:
            print("  " + row(name, y[s], q[s], d[s]))


if __name__ == "__main__":
    main()
