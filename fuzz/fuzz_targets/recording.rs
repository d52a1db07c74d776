//! A recording given to `drainwatch analyze FILE` or `report FILE`: the
//! header and observation lines parsed, then replayed through the engine
//! with the recorded configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rec) = drainwatch_correlate::parse_recording(text) else {
        return;
    };
    let cfg = rec.header.map(|h| h.config).unwrap_or_default();
    if let Ok(report) = drainwatch_correlate::analyze(&cfg, rec.observations) {
        for v in &report.verdicts {
            let _ = v.line();
        }
        serde_json::to_string(&report).expect("a report always serializes");
    }
});
