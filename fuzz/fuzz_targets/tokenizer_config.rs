//! A model folder's tokenizer_config.json (special tokens, chat template), then the template
//! rendered.
#![no_main]
use fraudlab::model::ChatMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let d = fraudlab_fuzz::folder("tokc");
    if !d.join("tokenizer.json").exists() {
        fraudlab_fuzz::put_in(
            &d,
            "tokenizer.json",
            fraudlab_fuzz::SMALL_TOKENIZER.as_bytes(),
        );
    }
    fraudlab_fuzz::put_in(&d, "tokenizer_config.json", data);
    if let Ok(t) = fraudlab::model::TextTokenizer::from_folder(&d) {
        let msgs = [
            ChatMessage::new("system", "S"),
            ChatMessage::new("user", "ab"),
        ];
        if let Ok(s) = t.apply_chat_template(&msgs, true) {
            let _ = t.encode(&s);
        }
    }
});
