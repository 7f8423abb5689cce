#!/bin/sh
# Writes a starting corpus for every fuzz target under fuzz/corpus/<target>/: the files of the
# tiny demo model, a one-step adapter trained on it, and small hand-written files.
# Run from the repository root after `cargo build --release`.
set -eu
B=${FRAUDLAB:-target/release/fraudlab}
C=fuzz/corpus
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
seed() { mkdir -p "$C/$1"; cat > "$C/$1/$2"; }

"$B" demo-model --out "$T/m" --gguf > /dev/null
seed safetensors model < "$T/m/model.safetensors"
seed gguf q8_0 < "$T/m.gguf"
seed config_json tiny < "$T/m/config.json"
seed tokenizer_json tiny < "$T/m/tokenizer.json"
seed tokenizer_config tiny < "$T/m/tokenizer_config.json"

FRAUDLAB_SESSIONS="$T/s" "$B" train --model "$T/m" --data assets/sample-dialogues.jsonl \
    --max-steps 1 --batch 1 --grad-accum 1 --max-len 64 --out "$T/run" > /dev/null 2>&1
seed safetensors adapter < "$T/run/adapter/adapter_model.safetensors"
seed adapter_config tiny < "$T/run/adapter/adapter_config.json"
seed adapter_meta trained < "$T/run/adapter/fraudlab.json"
printf '%s' '{"instruction": "i", "system": "s", "anonymize_speakers": true, "threshold": 0.4, "threshold_for_recall": {"0.95": 0.2}, "stream": {"threshold": 0.6, "consecutive": 2}}' | seed adapter_meta full

printf '%s' "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'].strip() + '<|im_end|>\n' }}{%- else %}{{- '<|im_start|>system\nYou are Qwen.<|im_end|>\n' }}{%- endif %}{%- for message in messages %}{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant\n' + message.content | trim + '<|im_end|>\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}" | seed chat_template qwen
printf '%s' "{% for message in messages %}<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}" | seed chat_template chatml

head -n 3 assets/sample-dialogues.jsonl | seed dataset_jsonl fraud
printf '%s\n' '[{"instruction": "a", "input": "b", "output": "{\"is_fraud\": false}"}]' | seed dataset_jsonl alpaca
printf '%s\n' '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "{\"is_fraud\": true}"}]}' | seed dataset_jsonl chat
printf '%s\n' '{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}]}' | seed dataset_jsonl sharegpt
printf '%s\n' '{"text": "hello"}' | seed dataset_jsonl text
printf '%s\n' 'case,speaker,content,is_fraud' '1,客服,"您好, 请转账",True' '1,用户,"好""的",False' '2,A,hi,0' | seed dataset_csv turns

printf '%s\n' '{"id":"0123456789abcdef","action":"label","label":true,"fraud_speaker":"甲","reason":null,"time":1.5}' \
    '{"id":"0123456789abcdef","action":"undo","time":"2026-12-01T10:00:00Z"}' | seed journal labels
printf '%s\n' '{"created": "2026-12-01T10:00:00Z", "models": ["a"], "datasets": ["d.jsonl"], "active_model": "a", "active_dataset": null, "settings": {"pane": "probe"}, "other": 1}' | seed session_json full
echo "wrote the seed corpus under $C/"
