//! Kubernetes manifests given to `drainwatch audit -f`: every YAML document
//! loaded, the graceful-shutdown rules applied, the report rendered.
#![no_main]

use drainwatch_ops::audit::{
    self,
    load::{self, Loaded, UnknownKinds},
    rules::RuleConfig,
};
use libfuzzer_sys::fuzz_target;

const NAME: &str = "fuzz.yaml";

fuzz_target!(|data: &[u8]| {
    // `audit` reads files with `read_to_string`: non-UTF-8 is a read error.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut loaded = Loaded::default();
    match load::load_str(NAME, text, UnknownKinds::Skip, &mut loaded) {
        Ok(()) => {
            if let Ok(report) = audit::audit(loaded, &RuleConfig::default()) {
                let _ = audit::render_text(&report);
                serde_json::to_string(&report).expect("a report always serializes");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(NAME), "error does not name the file: {msg}");
        }
    }
});
