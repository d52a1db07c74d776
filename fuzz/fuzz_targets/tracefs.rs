//! A tracefs `events/*/*/format` file, as the loader reads it at start-up:
//! parsed, turned into the record layouts the programs get, and its
//! `__print_symbolic` reset-reason table read.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../probe-user/src/kernel/tracefs.rs"]
mod tracefs;

const NAME: &str = "fuzz/events/tcp/tcp_send_reset/format";

fuzz_target!(|data: &[u8]| {
    // The loader reads the file with `read_to_string`: non-UTF-8 is a read error.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match tracefs::parse_format(NAME, text) {
        Ok(f) => {
            let _ = tracefs::tp_layout(&f);
            let _ = tracefs::proc_layout(Some(&f), Some(&f));
            let _ = f.symbols("reason");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(NAME), "error does not name the file: {msg}");
        }
    }
});
