//! drainwatch beside a lab scenario, checked against the lab's ground truth:
//! seed 000's GCP hairpin. The observer watches master m1's network
//! namespace (`--netns`), records, and the recording is correlated with m1's
//! addresses and the VIP it holds.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Daemon, lab_binary, root_or_skip, serial};

#[test]
fn gcp_hairpin_verdict_counts_every_refused_client_request() {
    let _g = serial();
    if !root_or_skip("gcp_hairpin_verdict_counts_every_refused_client_request") {
        return;
    }
    let out = std::env::temp_dir().join(format!("dwt-lab-gcp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    /// Kills the scenario if the test fails midway (the lab cleans up after itself).
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                // SAFETY: signalling our own child; SIGTERM lets it tear down.
                unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
                let _ = self.0.wait();
            }
        }
    }
    let mut lab = Guard(
        Command::new(lab_binary())
            .args(["run", "gcp-ilb-rollout", "--out"])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("drainwatch-lab"),
    );
    // m1's namespace appears as the lab builds its topology; the rollout
    // starts seconds later.
    let deadline = Instant::now() + Duration::from_secs(15);
    let ns = loop {
        let list = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip");
        let text = String::from_utf8_lossy(&list.stdout).into_owned();
        if let Some(ns) = text
            .split_whitespace()
            .find(|n| n.starts_with("dwlab-") && n.ends_with("-m1"))
        {
            break ns.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the lab never created m1's namespace"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let rec = out.with_extension("rec.jsonl");
    let rec_s = rec.to_str().expect("utf8").to_string();
    let d = Daemon::start(&[
        "--netns",
        &format!("/run/netns/{ns}"),
        "--no-wire",
        "--record",
        &rec_s,
    ]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = lab.0.try_wait().expect("wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the gcp scenario did not finish in 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "drainwatch-lab run gcp-ilb-rollout failed"
    );
    assert!(d.stop().success());

    // Ground truth: every request m1's own clients saw refused.
    let truth: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("gcp-ilb-rollout/truth.json")).expect("truth.json"),
    )
    .expect("json");
    let refused_by_m1_clients = truth["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter(|r| {
            r["client"].as_str().is_some_and(|c| c.starts_with("m1-")) && r["outcome"] == "refused"
        })
        .count() as u64;
    assert!(
        refused_by_m1_clients > 0,
        "the scenario reproduces seed 000"
    );
    let m1 = truth["params"]["masters"]["m1"]
        .as_str()
        .expect("m1 address");
    let vip = truth["params"]["vip"].as_str().expect("vip");

    let out_json = Command::new(env!("CARGO_BIN_EXE_drainwatch"))
        .args(["analyze", &rec_s, "--instance", "m1", "--output", "json"])
        .args([
            "--local",
            m1,
            "--local",
            vip,
            "--local-vip",
            vip,
            "--vip",
            vip,
        ])
        .args(["--shutdown-delay", "7s", "--request-timeout", "6s"])
        .output()
        .expect("analyze");
    let report: serde_json::Value = serde_json::from_slice(&out_json.stdout).unwrap_or_else(|e| {
        panic!(
            "analyze gave no report ({e}): {}",
            String::from_utf8_lossy(&out_json.stderr)
        )
    });
    let verdicts = report["verdicts"].as_array().expect("verdicts");
    // Every refusal of m1's own clients through the VIP is a hairpin verdict:
    // the rollout's, and any from before the stand-in first listened.
    let hairpin_count = |verdicts: &[serde_json::Value]| -> u64 {
        verdicts
            .iter()
            .filter(|v| v["cause"] == "refused_while_not_listening" && v["path"] == "local_hairpin")
            .map(|v| v["count"].as_u64().expect("count"))
            .sum()
    };
    let live = hairpin_count(verdicts);
    assert_eq!(
        live, refused_by_m1_clients,
        "refused count equals the clients' refused count: {verdicts:#?}"
    );
    assert!(
        verdicts.iter().any(|v| v["instance"] == "m1"),
        "verdicts name m1: {verdicts:#?}"
    );
    assert!(
        !verdicts.iter().any(|v| v["cause"] == "lb_detection_slow"),
        "truth: the LB took m1 out in time (E2 + t < E3): {report:#}"
    );

    // The same run from real tcpdump's capture on m1: the same verdict count.
    let pcap = out.join("gcp-ilb-rollout/m1.pcap");
    let pcap_json = Command::new(env!("CARGO_BIN_EXE_drainwatch"))
        .args([
            "analyze",
            "--pcap",
            pcap.to_str().expect("utf8"),
            "--instance",
            "m1",
        ])
        .args([
            "--local",
            m1,
            "--local",
            vip,
            "--local-vip",
            vip,
            "--vip",
            vip,
        ])
        .args(["--output", "json"])
        .output()
        .expect("analyze --pcap");
    let pcap_report: serde_json::Value =
        serde_json::from_slice(&pcap_json.stdout).unwrap_or_else(|e| {
            panic!(
                "analyze --pcap gave no report ({e}): {}",
                String::from_utf8_lossy(&pcap_json.stderr)
            )
        });
    let pcap_verdicts = pcap_report["report"]["verdicts"]
        .as_array()
        .or_else(|| pcap_report["verdicts"].as_array())
        .expect("pcap verdicts");
    assert_eq!(
        hairpin_count(pcap_verdicts),
        live,
        "live (kernel) and capture give the same hairpin count: {pcap_report:#}"
    );
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(&rec);
}
