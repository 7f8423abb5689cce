//! A model's config.json.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = fraudlab_fuzz::put("config.json", data);
    if let Ok(c) = fraudlab::model::Qwen2Config::from_file(&p) {
        let _ = (c.parameter_count(), c.eos_ids(), c.head_dim());
    }
});
