//! A session's session.json.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static S: std::sync::OnceLock<fraudlab::data::Session> = std::sync::OnceLock::new();
    let s = S.get_or_init(|| fraudlab::data::Session::open(fraudlab_fuzz::scratch(), "s").unwrap());
    fraudlab_fuzz::put_in(s.dir(), "session.json", data);
    let _ = s.load_config();
});
