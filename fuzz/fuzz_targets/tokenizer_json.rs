//! A model folder's tokenizer.json, then encoding and decoding with it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let d = fraudlab_fuzz::folder("tokj");
    fraudlab_fuzz::put_in(&d, "tokenizer.json", data);
    if let Ok(t) = fraudlab::model::TextTokenizer::from_folder(&d) {
        if let Ok(ids) = t.encode("ab 你好 <|im_end|>") {
            let _ = t.decode(&ids, false);
        }
    }
});
