//! A safetensors file: header checks, then every tensor read.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = fraudlab_fuzz::put("x.safetensors", data);
    if let Ok(f) = fraudlab::model::safetensors_io::SafetensorsFile::open(&p) {
        for k in f.entries.keys() {
            let _ = f.load(k, candle_core::DType::F32, &candle_core::Device::Cpu);
        }
    }
});
