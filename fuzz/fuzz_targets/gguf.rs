//! A GGUF file: header, config from the metadata, tokenizer from the metadata.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = fraudlab_fuzz::put("x.gguf", data);
    if let Ok(g) = fraudlab::model::gguf::GgufFile::open(&p) {
        let _ = g.config().map(|c| c.parameter_count());
        let _ = g.quant_summary();
        let _ = g.parameter_count();
        let _ = g.chat_template();
        if g.tokenizer_json().is_ok() {
            let _ = fraudlab::model::TextTokenizer::from_gguf(&g);
        }
        for name in g.content.tensor_infos.keys().take(4) {
            let _ = g
                .qtensor(name)
                .map(|q| q.dequantize(&candle_core::Device::Cpu));
        }
    }
});
