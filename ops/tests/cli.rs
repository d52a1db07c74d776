//! The tools driven through their clap Args, as the `drainwatch` binary does.

use std::path::PathBuf;

use clap::Parser;
use drainwatch_ops::audit::{self, AuditArgs};
use drainwatch_ops::lb_check::{self, LbCheckArgs};

#[derive(Debug, Parser)]
#[command(name = "drainwatch")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    LbCheck(LbCheckArgs),
    Audit(AuditArgs),
}

fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
    Cli::try_parse_from(std::iter::once("drainwatch").chain(args.iter().copied())).map(|c| c.cmd)
}

fn lb(args: &[&str]) -> (bool, String) {
    let mut full = vec!["lb-check"];
    full.extend_from_slice(args);
    let Cmd::LbCheck(a) = parse(&full).expect("lb-check flags parse") else {
        panic!("not lb-check")
    };
    let mut out = Vec::new();
    let pass = lb_check::run_to(&a, &mut out).expect("lb-check runs");
    (pass, String::from_utf8(out).expect("UTF-8 report"))
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn audit_run(args: &[&str], stdin: &str) -> anyhow::Result<(bool, String)> {
    let mut full = vec!["audit"];
    full.extend_from_slice(args);
    let Cmd::Audit(a) = parse(&full).expect("audit flags parse") else {
        panic!("not audit")
    };
    let mut out = Vec::new();
    let pass = audit::run_to(&a, &mut stdin.as_bytes(), &mut out)?;
    Ok((pass, String::from_utf8(out).expect("UTF-8 report")))
}

#[test]
fn lb_check_aws_seed_001_fails_20s_with_timeline() {
    let (pass, out) = lb(&["--preset", "aws-nlb", "--shutdown-delay", "20s"]);
    assert!(!pass);
    for line in [
        "E1   T+0s      P1 kicks off and immediately gets 200 from /readyz",
        "E3   T+10s     P2 kicks off",
        "E5   T+20s     P3 kicks off",
        "T+30s     P3 times out after 10s (worst case)",
        "FAIL detection: worst-case detection 30s exceeds shutdown-delay 20s (margin -10s)",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    assert!(out.ends_with("FAIL\n"), "{out}");
}

#[test]
fn lb_check_aws_tie_fails_and_longer_delay_passes() {
    let (pass, out) = lb(&["--preset", "aws-nlb", "--shutdown-delay", "30"]);
    assert!(
        !pass,
        "t == shutdown-delay must fail (strict E2 + t < E3)\n{out}"
    );
    assert!(out.contains("(margin 0s)"), "{out}");
    let (pass, out) = lb(&[
        "--preset",
        "aws-nlb",
        "--shutdown-delay",
        "70s",
        "--termination-grace-period",
        "135",
    ]);
    assert!(pass, "{out}");
    assert!(
        out.contains(
            "PASS detection: the LB takes the backend out of service within 30s, 40s before"
        ),
        "{out}"
    );
    assert!(out.contains("PASS grace period: termination grace period 135s >= shutdown-delay 70s + request timeout 60s = 130s (margin 5s)"), "{out}");
}

#[test]
fn lb_check_grace_failure_fails_the_run() {
    let (pass, out) = lb(&[
        "--preset",
        "aws-nlb",
        "--shutdown-delay",
        "70s",
        "--termination-grace-period",
        "2m",
    ]);
    assert!(!pass);
    assert!(out.contains("FAIL grace period"), "{out}");
}

#[test]
fn lb_check_gcp_warns_about_hairpin_and_haproxy_explains() {
    let (pass, out) = lb(&["--preset", "gcp", "--shutdown-delay", "30s"]);
    assert!(pass, "{out}");
    assert!(out.contains("WARNING: GCP internal passthrough"), "{out}");
    let (_, out) = lb(&[
        "--preset",
        "haproxy",
        "--inter",
        "10s",
        "--fall",
        "2",
        "--timeout",
        "10s",
        "--shutdown-delay",
        "30s",
    ]);
    assert!(out.contains("Unlike AWS, the timeouts add up"), "{out}");
    assert!(out.contains("worst-case detection 40s exceeds"), "{out}");
}

#[test]
fn lb_check_json_output() {
    let (_, out) = lb(&[
        "--preset",
        "aws-nlb",
        "--shutdown-delay",
        "20s",
        "--output",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["worst_case_detection_seconds"], 30.0);
    assert_eq!(v["detection"]["margin_ms"], -10_000);
    assert_eq!(v["pass"], false);
    assert_eq!(v["preset"], "aws-nlb");
    assert_eq!(v["timeline"][3]["id"], "E4");
    assert_eq!(v["timeline"][3]["at_seconds"], 20.0);
}

#[test]
fn lb_check_flag_errors_name_the_flag() {
    let e = parse(&[
        "lb-check",
        "--preset",
        "aws-nlb",
        "--shutdown-delay",
        "soon",
    ])
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("--shutdown-delay"), "{msg}");
    assert!(msg.contains("invalid duration \"soon\""), "{msg}");
    let e = parse(&[
        "lb-check",
        "--preset",
        "aws-nlb",
        "--shutdown-delay",
        "30s",
        "--interval",
        "10x",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("--interval"), "{e}");
    let e = parse(&[
        "lb-check",
        "--preset",
        "aws-nlb",
        "--shutdown-delay",
        "30s",
        "--unhealthy-threshold",
        "0",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("--unhealthy-threshold"), "{e}");
    let e = parse(&["lb-check", "--preset", "f5", "--shutdown-delay", "30s"]).unwrap_err();
    assert!(e.to_string().contains("--preset"), "{e}");
    let e = parse(&["lb-check", "--preset", "aws-nlb"]).unwrap_err();
    assert!(e.to_string().contains("--shutdown-delay"), "{e}");

    let Cmd::LbCheck(a) = parse(&[
        "lb-check",
        "--preset",
        "custom",
        "--shutdown-delay",
        "30s",
        "--interval",
        "5s",
    ])
    .unwrap() else {
        panic!()
    };
    let e = lb_check::run_to(&a, &mut Vec::new()).unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        "lb-check: invalid health-check parameters: --preset custom needs --timeout"
    );
}

#[test]
fn audit_flags_seed_003_original() {
    let (pass, out) = audit_run(&["-f", &fixture("seed003-original.yaml")], "").unwrap();
    assert!(!pass);
    for want in [
        "ERROR   Deployment sre-reporting-prod/sre-reporting, container sre-reporting [grace-period]",
        "  field:   spec.template.spec.terminationGracePeriodSeconds = 30",
        "[drain-window]",
        "  field:   spec.template.spec.containers[0].lifecycle.preStop = preStop sleep 20s",
        "ERROR   Deployment sre-reporting-prod/sre-reporting, container google-auth-proxy [sidecar-prestop]",
        "  field:   spec.template.spec.containers[1].lifecycle.preStop = none",
        "skipped v1 Service sre-reporting-prod/sre-reporting: no pod template to audit",
        "3 error(s), 0 warning(s), 0 info: FAIL",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
}

#[test]
fn audit_passes_seed_003_proposal_and_seed_000_apiserver() {
    let (pass, out) = audit_run(
        &[
            "-f",
            &fixture("seed003-proposal.yaml"),
            "-f",
            &fixture("seed000-kube-apiserver.yaml"),
        ],
        "",
    )
    .unwrap();
    assert!(pass, "{out}");
    assert!(
        out.contains("2 object(s) audited (2 clean), 0 skipped: 0 error(s)"),
        "{out}"
    );
}

#[test]
fn audit_reads_stdin_and_json() {
    let text = std::fs::read_to_string(fixture("seed003-original.yaml")).unwrap();
    let (pass, out) = audit_run(&["-f", "-", "--output", "json"], &text).unwrap();
    assert!(!pass);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["summary"]["errors"], 3);
    let o = &v["objects"][0];
    assert_eq!(o["file"], "<stdin>");
    assert_eq!(o["kind"], "Deployment");
    assert_eq!(o["namespace"], "sre-reporting-prod");
    let f = &o["findings"][0];
    assert_eq!(f["severity"], "error");
    assert_eq!(f["rule"], "grace-period");
    assert_eq!(f["container"], "sre-reporting");
    assert_eq!(
        f["field"],
        "spec.template.spec.terminationGracePeriodSeconds"
    );
    assert_eq!(f["suggested"], "56");
    assert!(f["why"].as_str().unwrap().contains("seed 003"));
    assert_eq!(v["skipped"][0]["kind"], "Service");
}

#[test]
fn audit_errors_name_file_and_document() {
    let path = fixture("invalid.yaml");
    let e = audit_run(&["-f", &path], "").unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.starts_with(&format!("{path}: document 2: invalid YAML:")),
        "{msg}"
    );

    let path = fixture("unknown-kind.yaml");
    let (pass, out) = audit_run(&["-f", &path], "").unwrap();
    assert!(pass, "{out}");
    assert!(
        out.contains(&format!(
            "note: {path} (document 2): skipped widgets.example.com/v1 Widget prod/gizmo"
        )),
        "{out}"
    );
    let e = audit_run(&["-f", &path, "--strict"], "").unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.starts_with(&format!(
            "{path}: document 2: unknown kind widgets.example.com/v1 Widget \"gizmo\""
        )),
        "{msg}"
    );

    let e = audit_run(&["-f", "/nonexistent/x.yaml"], "").unwrap_err();
    assert!(
        format!("{e:#}").starts_with("/nonexistent/x.yaml: cannot read manifest"),
        "{e:#}"
    );
}

#[test]
fn audit_flag_errors() {
    let e = parse(&["audit"]).unwrap_err();
    assert!(e.to_string().contains("--filename"), "{e}");
    let e = parse(&["audit", "-f", "x.yaml", "--request-timeout", "forever"]).unwrap_err();
    assert!(e.to_string().contains("--request-timeout"), "{e}");
    let e = parse(&["audit", "-f", "x.yaml", "--output", "xml"]).unwrap_err();
    assert!(e.to_string().contains("--output"), "{e}");
    // Several files after one -f, as kubectl users type them.
    let Cmd::Audit(a) = parse(&["audit", "-f", "a.yaml", "b.yaml", "-f", "-"]).unwrap() else {
        panic!()
    };
    assert_eq!(a.files.len(), 3);
}
