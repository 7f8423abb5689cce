//! An adapter folder's fraudlab.json.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let d = fraudlab_fuzz::folder("meta");
    fraudlab_fuzz::put_in(&d, "fraudlab.json", data);
    let _ = fraudlab::model::adapter::AdapterMeta::read(&d);
});
