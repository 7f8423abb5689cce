//! An adapter folder's adapter_config.json, loaded onto the tiny model.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::Mutex;

fuzz_target!(|data: &[u8]| {
    static MODEL: std::sync::OnceLock<Mutex<fraudlab::model::LoadedModel>> =
        std::sync::OnceLock::new();
    let tiny = fraudlab_fuzz::tiny();
    let m = MODEL.get_or_init(|| {
        Mutex::new(fraudlab::model::load(tiny.model.to_str().unwrap(), Default::default()).unwrap())
    });
    let d = fraudlab_fuzz::folder("adapter");
    if !d.join("adapter_model.safetensors").exists() {
        std::fs::copy(
            tiny.adapter.join("adapter_model.safetensors"),
            d.join("adapter_model.safetensors"),
        )
        .unwrap();
    }
    fraudlab_fuzz::put_in(&d, "adapter_config.json", data);
    let mut lm = m.lock().unwrap_or_else(|e| e.into_inner());
    let _ = fraudlab::model::adapter::load_adapter(&mut lm.model, &d);
});
