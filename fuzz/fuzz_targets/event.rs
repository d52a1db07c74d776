//! One ring-buffer record, as the daemon's reader gets it: parsed into a
//! `RawEvent`, decoded into an `Event`, printed as a text line and as JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../probe-user/src/decode/event.rs"]
mod event;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = event::parse_raw(data) else {
        return;
    };
    let cx = event::DecodeContext {
        // 2026-11-23 minus an hour of uptime, as the daemon computes it.
        boot_to_unix_ns: 1_795_000_000_000_000_000,
        sock_key: 0x5eed_5eed_5eed_5eed,
        reset_reasons: vec![(2, "NO_SOCKET".into()), (5, "TCP_ABORT_ON_LINGER".into())],
        hz: Some(250),
        default_keepalive_secs: Some(7200),
    };
    if let Ok(ev) = event::decode(&raw, &cx) {
        let _ = ev.human();
        let _ = ev.service_port(&[6443, 443]);
        serde_json::to_string(&ev).expect("an event always serializes");
    }
});
