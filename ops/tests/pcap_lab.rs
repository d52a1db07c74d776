//! `analyze --pcap` on what real tcpdump captured in a lab scenario, checked
//! against the lab's ground truth: the GCP internal LB hairpin, decoded from
//! master m1's capture, gives a hairpin verdict whose refused count equals
//! the refused requests m1's clients recorded.

use clap::Parser;
use drainwatch_ops::pcap::{AnalyzePcapArgs, analyze_capture};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: AnalyzePcapArgs,
}

/// The lab binary in the same target directory (`cargo test --workspace`
/// builds it).
fn lab_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let p = dir.join("drainwatch-lab");
    assert!(
        p.exists(),
        "{} missing: run `cargo build -p drainwatch-lab` (cargo xtask test does)",
        p.display()
    );
    p
}

#[test]
fn gcp_capture_gives_the_hairpin_verdict_with_the_clients_refused_count() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    if uid != "0" {
        assert!(
            std::env::var_os("DRAINWATCH_NO_SKIP").is_none(),
            "the lab needs root: DRAINWATCH_NO_SKIP is set, nothing may skip"
        );
        println!("SKIPPED: the lab needs root to create network namespaces");
        return;
    }
    let out = std::env::temp_dir().join(format!("dwt-pcap-gcp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = std::process::Command::new(lab_binary())
        .args(["run", "gcp-ilb-rollout", "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("drainwatch-lab");
    assert!(
        status.success(),
        "drainwatch-lab run gcp-ilb-rollout failed"
    );
    let dir = out.join("gcp-ilb-rollout");
    let truth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("truth.json")).expect("truth.json"))
            .expect("json");
    let refused = truth["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter(|r| {
            r["client"].as_str().is_some_and(|c| c.starts_with("m1-")) && r["outcome"] == "refused"
        })
        .count() as u64;
    assert!(refused > 0, "the scenario reproduces the hairpin refusals");
    let m1 = truth["params"]["masters"]["m1"].as_str().expect("m1");
    let vip = truth["params"]["vip"].as_str().expect("vip");
    let pcap = dir.join("m1.pcap");
    let cli = Cli::try_parse_from([
        "analyze",
        "--pcap",
        pcap.to_str().expect("utf8"),
        "--local",
        m1,
        "--local",
        vip,
        "--local-vip",
        vip,
        "--vip",
        vip,
        "--instance",
        "m1",
    ])
    .expect("flags");
    let (_, report) = analyze_capture(&cli.args.file, &cli.args.capture, &cli.args.correlate)
        .expect("decode and correlate");
    // The rollout's hairpin verdict, and any from before the stand-in first listened.
    let hairpin: u64 = report
        .verdicts
        .iter()
        .filter(|v| v.cause.label() == "refused_local_hairpin")
        .map(|v| v.count)
        .sum();
    assert_eq!(
        hairpin, refused,
        "refused count equals the clients' refused count: {:#?}",
        report.verdicts
    );
    let _ = std::fs::remove_dir_all(&out);
}
