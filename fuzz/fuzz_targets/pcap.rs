//! A capture given to `drainwatch analyze --pcap` or `report`: pcap or
//! pcapng, decoded into observations by the same rules as the classifier,
//! summarised, then correlated.
#![no_main]

use drainwatch_ops::pcap::{self, flows::FlowOptions};
use libfuzzer_sys::fuzz_target;

const NAME: &str = "fuzz.pcap";

fuzz_target!(|data: &[u8]| {
    let opts = FlowOptions {
        ports: vec![6443, 443],
        locals: Vec::new(),
    };
    match pcap::decode_bytes(NAME, data, &opts) {
        Ok(d) => {
            let _ = pcap::summary_lines(&d, &opts.ports);
            let _ = pcap::count_kinds(&d.observations);
            serde_json::to_string(&d).expect("a decoded capture always serializes");
            let cfg = drainwatch_correlate::Config::default();
            drainwatch_correlate::analyze(&cfg, d.observations).expect("default config is valid");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(NAME), "error does not name the file: {msg}");
        }
    }
});
