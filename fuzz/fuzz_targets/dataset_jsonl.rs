//! A dataset file in any JSON format (JSONL lines or a JSON array), format detected.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = fraudlab_fuzz::put("x.jsonl", data);
    if let Ok(r) = fraudlab::data::load(&p) {
        for s in &r.samples {
            let _ = (
                s.turns(),
                s.prompt_text(),
                s.expected_answer(true),
                s.anonymized(),
            );
        }
    }
});
