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
fn lb_check_aws_preset_fails_20s_with_timeline() {
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
        "detection time == shutdown-delay must fail (strictly before the listener closes)\n{out}"
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
fn audit_flags_reporting_before() {
    let (pass, out) = audit_run(&["-f", &fixture("reporting-before.yaml")], "").unwrap();
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
fn audit_passes_reporting_after_and_apiserver_static_pod() {
    let (pass, out) = audit_run(
        &[
            "-f",
            &fixture("reporting-after.yaml"),
            "-f",
            &fixture("kube-apiserver-static-pod.yaml"),
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
    let text = std::fs::read_to_string(fixture("reporting-before.yaml")).unwrap();
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
    assert!(
        f["why"]
            .as_str()
            .unwrap()
            .contains("preStop sleep 20s + request timeout 30s"),
        "{f}"
    );
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

/// Two Deployments with a 5s preStop sleep; the second declares it is behind a Service.
const SHORT_SLEEP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: prod}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 60
      containers:
      - name: web
        ports: [{containerPort: 8080}]
        lifecycle: {preStop: {exec: {command: ["sleep", "5"]}}}
        readinessProbe: {httpGet: {path: /ready, port: 8080}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: prod}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata:
      labels: {app: api}
      annotations: {drainwatch.io/consumer: service}
    spec:
      terminationGracePeriodSeconds: 60
      containers:
      - name: api
        ports: [{containerPort: 8080}]
        lifecycle: {preStop: {exec: {command: ["sleep", "15"]}}}
        readinessProbe: {httpGet: {path: /ready, port: 8080}}
"#;

#[test]
fn audit_consumer_defaults_to_service_and_says_so() {
    let (pass, out) = audit_run(&["-f", "-"], SHORT_SLEEP).unwrap();
    assert!(!pass);
    for want in [
        "ERROR   Deployment prod/web, container web [drain-window]",
        "  why:     consumer model service (default: --consumer not given): the endpoint is \
         marked terminating (EndpointSlice ready: false, terminating: true)",
        "2 object(s) audited (1 clean), 0 skipped: 1 error(s)",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    let (_, out) = audit_run(&["-f", "-", "--output", "json"], SHORT_SLEEP).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let c = &v["objects"][0]["consumer"];
    assert_eq!(c["model"], "service");
    assert_eq!(c["source"], "default: --consumer not given");
    assert_eq!(c["detection_seconds"], 0.0);
    assert_eq!(c["required_serving_seconds"], 10.0);
    assert!(c.get("lb_health_check").is_none(), "{c}");
}

#[test]
fn audit_consumer_flag_uses_lb_check_math_and_annotation_wins() {
    let args = [
        "-f",
        "-",
        "--consumer",
        "lb-health-check",
        "--lb-preset",
        "aws-nlb",
        "--lb-interval",
        "5s",
    ];
    let (pass, out) = audit_run(&args, SHORT_SLEEP).unwrap();
    assert!(!pass);
    for want in [
        "consumer model lb-health-check (--consumer; health check AWS Network Load Balancer \
         interval 5s, timeout 10s, unhealthy threshold 2 from --lb-preset",
        "it must take the backend out before the listener closes: worst-case detection 20s \
         (unhealthy threshold x interval + timeout) + 10s",
        "  suggest: exec: command: [\"sleep\", \"30\"]",
        // api declares a Service in front: its 15s sleep covers 10s of propagation.
        "2 object(s) audited (1 clean)",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    let mut json = args.to_vec();
    json.extend(["--output", "json"]);
    let (_, out) = audit_run(&json, SHORT_SLEEP).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let c = &v["objects"][0]["consumer"];
    assert_eq!(c["model"], "lb-health-check");
    assert_eq!(c["source"], "--consumer");
    assert_eq!(c["lb_health_check"]["preset"], "aws-nlb");
    assert_eq!(c["lb_health_check"]["params"]["interval_seconds"], 5.0);
    assert_eq!(c["lb_health_check"]["params"]["unhealthy_threshold"], 2);
    assert_eq!(c["detection_seconds"], 20.0);
    assert_eq!(c["propagation_budget_seconds"], 10.0);
    assert_eq!(c["required_serving_seconds"], 30.0);
    let f = &v["objects"][0]["findings"][0];
    assert_eq!(f["rule"], "drain-window");
    assert!(
        f["why"]
            .as_str()
            .unwrap()
            .starts_with("consumer model lb-health-check (--consumer;"),
        "{f}"
    );
    let api = &v["objects"][1];
    assert_eq!(api["name"], "api");
    assert_eq!(api["consumer"]["model"], "service");
    assert_eq!(api["consumer"]["source"], "drainwatch.io/consumer");
    assert_eq!(api["findings"], serde_json::json!([]));
}

#[test]
fn audit_consumer_flag_errors_name_the_flags() {
    let e = audit_run(&["-f", "-", "--consumer", "lb-health-check"], SHORT_SLEEP).unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        "audit: --consumer lb-health-check needs the load balancer's health check: \
         --lb-preset, or --lb-interval, --lb-timeout and --lb-unhealthy-threshold"
    );
    let e = audit_run(&["-f", "-", "--lb-interval", "5s"], SHORT_SLEEP).unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        "audit: load balancer health check: --lb-interval, --lb-timeout and \
         --lb-unhealthy-threshold are all needed unless a preset gives defaults \
         (--lb-timeout is missing)"
    );
    let e = parse(&["audit", "-f", "x.yaml", "--consumer", "nlb"]).unwrap_err();
    assert!(e.to_string().contains("--consumer"), "{e}");
    let e = parse(&["audit", "-f", "x.yaml", "--lb-preset", "f5"]).unwrap_err();
    assert!(e.to_string().contains("--lb-preset"), "{e}");
    let e = parse(&["audit", "-f", "x.yaml", "--lb-unhealthy-threshold", "0"]).unwrap_err();
    assert!(e.to_string().contains("--lb-unhealthy-threshold"), "{e}");
    let e = parse(&["audit", "-f", "x.yaml", "--lb-timeout", "soon"]).unwrap_err();
    assert!(e.to_string().contains("invalid duration \"soon\""), "{e}");
    // A bad annotation names the file, document, object and annotation.
    let text = SHORT_SLEEP.replace(
        "drainwatch.io/consumer: service",
        "drainwatch.io/lb-health-check: \"interval=5s\"",
    );
    let e = audit_run(&["-f", "-"], &text).unwrap_err();
    assert!(
        format!("{e:#}").starts_with(
            "<stdin>: document 2: Deployment prod/api: annotation \
             drainwatch.io/lb-health-check: \"interval=5s\": interval, timeout and unhealthy \
             are all needed"
        ),
        "{e:#}"
    );
}

#[test]
fn audit_readiness_probe_on_a_named_port_serves_without_ports() {
    let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: app}
spec:
  terminationGracePeriodSeconds: 30
  containers:
  - name: app
    lifecycle: {preStop: {sleep: {seconds: 30}}}
    readinessProbe: {httpGet: {path: /ready, port: http}}
"#;
    let (pass, out) = audit_run(&["-f", "-"], text).unwrap();
    assert!(!pass, "{out}");
    for want in [
        "ERROR   Pod app, container app [grace-period]",
        "preStop sleep 30s + request timeout 30s (audit --request-timeout) = 60s",
        "ERROR   Pod app, container app [prestop-sleep-exceeds-grace]",
        "app gets SIGTERM with no time left",
        "2 error(s), 0 warning(s), 0 info: FAIL",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
}

/// The short-sleep web Deployment with `drainwatch.io/ignore` set to `ignore`.
fn waived(ignore: &str) -> String {
    SHORT_SLEEP.replacen(
        "metadata: {name: web, namespace: prod}",
        &format!("metadata: {{name: web, namespace: prod, annotations: {{drainwatch.io/ignore: \"{ignore}\"}}}}"),
        1,
    )
}

#[test]
fn audit_ignore_annotation_waives_named_rules_and_says_so() {
    let (pass, out) = audit_run(&["-f", "-"], SHORT_SLEEP).unwrap();
    assert!(!pass, "{out}");
    // Waived: the finding is listed as ignored and does not fail the audit.
    let (pass, out) = audit_run(&["-f", "-"], &waived("drain-window")).unwrap();
    assert!(pass, "{out}");
    assert!(
        out.contains(
            "ignored ERROR Deployment prod/web, container web [drain-window]: waived by drainwatch.io/ignore on the object"
        ),
        "{out}"
    );
    assert!(
        out.contains("2 object(s) audited (2 clean), 0 skipped: 0 error(s), 0 warning(s), 0 info, 1 ignored: PASS"),
        "{out}"
    );
    let (_, json) = audit_run(&["-f", "-", "--output", "json"], &waived("drain-window")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["summary"]["ignored"], 1);
    assert_eq!(v["objects"][0]["ignored"][0]["rule"], "drain-window");
    assert_eq!(
        v["objects"][0]["findings"].as_array().map(Vec::len),
        Some(0)
    );
    // Another rule waived: the drain-window finding still fails.
    let (pass, out) = audit_run(&["-f", "-"], &waived("readiness-probe, grace-period")).unwrap();
    assert!(!pass, "{out}");
    assert!(
        out.contains("[drain-window]") && !out.contains("ignored"),
        "{out}"
    );
    // A typo is an error naming the annotation, the value and the rules.
    let e = audit_run(&["-f", "-"], &waived("drain-widow")).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("document 1")
            && msg.contains("drainwatch.io/ignore")
            && msg.contains("\"drain-widow\" is not a rule")
            && msg.contains("drain-window"),
        "{msg}"
    );
}
