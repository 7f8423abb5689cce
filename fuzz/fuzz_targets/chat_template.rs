//! A chat template rendered on a short conversation.
#![no_main]
use fraudlab::model::ChatMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tpl = String::from_utf8_lossy(data);
    let msgs = [
        ChatMessage::new("system", "S"),
        ChatMessage::new("user", "你好"),
        ChatMessage::new("assistant", "{\"is_fraud\": true}"),
    ];
    let _ = fraudlab::model::tokenizer::render_chat(
        &tpl,
        "fuzz",
        &msgs,
        true,
        Some("<s>"),
        Some("</s>"),
    );
});
