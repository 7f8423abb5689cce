//! A turn-level CSV dataset.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = fraudlab_fuzz::put("x.csv", data);
    if let Ok(r) = fraudlab::data::load(&p) {
        for s in &r.samples {
            let _ = (s.turns(), s.prompt_text());
        }
    }
});
