"""Loads a fraudlab hand-off folder with LLaMA-Factory's own argument parser and dataset
loader, without training (or, with --train N, trains N steps on the CPU), and prints what it
read as one JSON object: the parsed settings, the sample counts, and the first training
example's tokens decoded (the whole text, and the part the loss is on).

usage: python llamafactory_check.py HANDOFF_DIR [--train STEPS]
Run with the current directory anywhere; it changes into HANDOFF_DIR (the YAML's paths are
relative to it). Needs llamafactory, torch and transformers importable.
"""
import contextlib
import json
import os
import sys

os.environ.setdefault("DISABLE_VERSION_CHECK", "1")


def main():
    # LLaMA-Factory prints examples on stdout: the JSON result is the only stdout line
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        result = run()
    print(json.dumps(result, ensure_ascii=False), file=real_stdout)


def run():
    folder = sys.argv[1]
    steps = int(sys.argv[sys.argv.index("--train") + 1]) if "--train" in sys.argv else 0
    os.chdir(folder)
    import torch
    from llamafactory.hparams.parser import read_args, get_train_args

    overrides = [] if torch.cuda.is_available() else ["bf16=false"]
    if steps:
        overrides += [f"max_steps={steps}", "save_strategy='no'", "eval_strategy='no'", "disable_gradient_checkpointing=true",
                      "preprocessing_num_workers=null", "logging_steps=1"]
    sys.argv = ["llamafactory", "train.yaml", *overrides]
    args = read_args()
    if steps:
        from llamafactory.train.tuner import run_exp
        run_exp(args)
        return {"trained": steps, "output": sorted(os.listdir(args["output_dir"]))}
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(dict(args))
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.model import load_tokenizer

    tok_mod = load_tokenizer(model_args)
    tokenizer = tok_mod["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    ds = get_dataset(template, model_args, data_args, training_args, stage="sft", **tok_mod)
    train = ds["train_dataset"]
    ev = ds.get("eval_dataset")
    first = train[0]
    labels = [t for t in first["labels"] if t != -100]
    return {
        "stage": finetuning_args.stage,
        "finetuning_type": finetuning_args.finetuning_type,
        "lora_rank": finetuning_args.lora_rank,
        "lora_alpha": finetuning_args.lora_alpha,
        "lora_dropout": finetuning_args.lora_dropout,
        "lora_target": finetuning_args.lora_target,
        "learning_rate": training_args.learning_rate,
        "lr_scheduler_type": str(training_args.lr_scheduler_type.value),
        "warmup_steps": training_args.warmup_steps,
        "num_train_epochs": training_args.num_train_epochs,
        "max_steps": training_args.max_steps,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "cutoff_len": data_args.cutoff_len,
        "template": data_args.template,
        "train_on_prompt": data_args.train_on_prompt,
        "seed": training_args.seed,
        "train_samples": len(train),
        "eval_samples": len(ev) if ev is not None else 0,
        "text": tokenizer.decode(first["input_ids"], skip_special_tokens=False),
        "target": tokenizer.decode(labels, skip_special_tokens=False),
    }


if __name__ == "__main__":
    main()
