//! A label journal: its lines parsed and replayed.
#![no_main]
use fraudlab::data::journal;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let r = journal::parse_journal(data);
    let _ = (r.current_labels(), r.problems());
    if let Ok(t) = std::str::from_utf8(data) {
        for l in t.lines() {
            let _ = fraudlab::data::JournalEntry::parse(l).map(|e| e.to_line());
        }
    }
});
