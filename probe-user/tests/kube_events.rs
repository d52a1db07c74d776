//! Verdicts as Kubernetes Events, end to end: a daemon watches the lab's
//! apiserver stand-in m1 roll while it writes events.k8s.io/v1 Events to
//! m2, another master's stand-in (which serves m1's pod, as every apiserver
//! of a cluster does: m1 itself is down when its verdicts come). Real
//! kubectl reads them back (events.k8s.io/v1, and plain `kubectl get events`
//! through core/v1, as kube-apiserver serves both); the refused connections'
//! verdict, growing while m1 stays down, is one event whose series count goes up.

mod common;

use std::{process::Command, time::Duration};

use common::{Daemon, Pair, parse_metric, root_or_skip, serial};
use serde_json::Value;

/// `kubectl get ... -o json` against m2, from the server namespace.
fn kubectl_json(pair: &Pair, kubeconfig: &std::path::Path, args: &[&str]) -> Value {
    let out = Command::new("ip")
        .args(["netns", "exec", &pair.server, "/usr/bin/kubectl"])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        // The test's own discovery cache: ~/.kube/cache is keyed by
        // host:port, which another stand-in (one without core/v1 Events)
        // may have had, and a stale entry sends `get events` elsewhere.
        .arg("--cache-dir")
        .arg(cache_dir(kubeconfig))
        .args(args)
        .args(["-o", "json"])
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("kubectl JSON")
}

/// kubectl's discovery cache for this test: beside its kubeconfig.
fn cache_dir(kubeconfig: &std::path::Path) -> std::path::PathBuf {
    kubeconfig
        .parent()
        .unwrap_or(std::path::Path::new("/tmp"))
        .join("kubectl-cache")
}

/// `kubectl get ...` as printed (kubectl's own table formatting).
fn kubectl_text(pair: &Pair, kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &pair.server, "/usr/bin/kubectl"])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        // The test's own discovery cache: ~/.kube/cache is keyed by
        // host:port, which another stand-in (one without core/v1 Events)
        // may have had, and a stale entry sends `get events` elsewhere.
        .arg("--cache-dir")
        .arg(cache_dir(kubeconfig))
        .args(args)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// kubectl's table cut into (column, cell) rows: kubectl aligns every cell
/// under its header (Go's tabwriter, which counts characters, not bytes), so
/// each cell runs from its header's offset to the next header's; the last
/// one to the end of the line.
fn kubectl_table(
    pair: &Pair,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> Vec<Vec<(String, String)>> {
    let text = kubectl_text(pair, kubeconfig, args);
    let mut lines = text.lines().map(|l| l.chars().collect::<Vec<char>>());
    let header = lines.next().expect("a header line");
    // A column starts after two spaces (headers like "LAST SEEN" hold one).
    let starts: Vec<usize> = (0..header.len())
        .filter(|&i| header[i] != ' ' && (i == 0 || (i >= 2 && header[i - 2..i] == [' ', ' '])))
        .collect();
    let cell = |l: &[char], k: usize| -> String {
        let end = starts.get(k + 1).copied().unwrap_or(l.len()).min(l.len());
        l[starts[k].min(end)..end]
            .iter()
            .collect::<String>()
            .trim()
            .to_string()
    };
    let names: Vec<String> = (0..starts.len()).map(|k| cell(&header, k)).collect();
    lines
        .map(|l| {
            (0..starts.len())
                .map(|k| (names[k].clone(), cell(&l, k)))
                .collect()
        })
        .collect()
}

fn refused_events(list: &Value) -> Vec<Value> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == "ConnectionsRefused")
        .cloned()
        .collect()
}

#[test]
fn verdicts_become_kubernetes_events_and_a_growing_one_one_series() {
    let _g = serial();
    if !root_or_skip("verdicts_become_kubernetes_events_and_a_growing_one_one_series") {
        return;
    }
    let pair = Pair::new();
    let dir = std::env::temp_dir().join(format!("dwt-kevents-{}", std::process::id()));
    let dir2 = dir.join("m2");
    std::fs::create_dir_all(&dir2).expect("dir");
    let mut m1 = common::graceful_standin(&pair, &dir, "1s", "1s");
    let probe_kc = common::standin_kubeconfig(&pair, &dir, "probe");
    // m2 in the client namespace, on a port the daemon does not watch.
    let m2_listen = format!("{}:7443", pair.client_v4);
    let _m2 = common::KillOnDrop(common::start_standin(
        &pair.client,
        &dir2,
        &[
            "--name",
            "m2",
            "--peer",
            "m1",
            "--listen",
            &m2_listen,
            "--san",
            &pair.client_v4,
            "--startup-delay",
            "100ms",
        ],
    ));
    let kc = dir2.join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: m2\n  cluster:\n    server: https://{m2_listen}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: events\ncontexts:\n- name: m2\n  context:\n    cluster: m2\n    user: u\ncurrent-context: m2\n",
            dir2.join("pki/ca.crt").display()
        ),
    )
    .expect("kubeconfig");
    let url = format!("https://{}:6443/", pair.server_v4);
    let ca = dir.join("pki/ca.crt");
    let d = Daemon::start_in(
        Some(&pair.server),
        &[
            "--no-wire",
            "--netns",
            "self",
            "--instance",
            "m1",
            "--apiserver-url",
            &url,
            "--apiserver-ca",
            ca.to_str().expect("utf8"),
            "--readyz-interval",
            "200ms",
            "--probe-kubeconfig",
            probe_kc.to_str().expect("utf8"),
            "--probe-mode",
            "new",
            "--probe-interval",
            "200ms",
            "--shutdown-delay",
            "1s",
            "--request-timeout",
            "1s",
            "--kubeconfig",
            kc.to_str().expect("utf8"),
            "--pod-namespace",
            "openshift-kube-apiserver",
            "--pod-selector",
            "app=openshift-kube-apiserver",
            "--node-name",
            "node-m1",
        ],
    );
    // The pod watcher knows m1's pod (through m2) before the roll.
    common::wait_for(Duration::from_secs(10), "m1's pod seen Ready", || {
        let m = d.metrics();
        if parse_metric(
            &m,
            "drainwatch_apiserver_pod_ready{pod=\"kube-apiserver-m1\"}",
        ) == 1.0
        {
            Ok(())
        } else {
            Err(m)
        }
    });
    let ns = ["-n", "openshift-kube-apiserver"];
    let get_events = || {
        kubectl_json(
            &pair,
            &kc,
            &["get", "events.v1.events.k8s.io", ns[0], ns[1]],
        )
    };
    assert_eq!(refused_events(&get_events()), Vec::<Value>::new());
    let pod = kubectl_json(
        &pair,
        &kc,
        &["get", "pod", "kube-apiserver-m1", ns[0], ns[1]],
    );

    // SAFETY: signalling the stand-in we started.
    unsafe { libc::kill(m1.0.id() as i32, libc::SIGTERM) };
    let _ = m1.0.wait();

    let first = common::wait_for(
        Duration::from_secs(20),
        "a ConnectionsRefused event read back by kubectl",
        || {
            let l = get_events();
            let r = refused_events(&l);
            if r.is_empty() {
                Err(l.to_string())
            } else {
                Ok(r)
            }
        },
    );
    assert_eq!(first.len(), 1, "{first:#?}");
    let e = &first[0];
    assert_eq!(e["apiVersion"], "events.k8s.io/v1");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["action"], "Observed");
    assert_eq!(e["reportingController"], "drainwatch.io/drainwatch");
    assert_eq!(e["reportingInstance"], "node-m1");
    assert_eq!(e["regarding"]["kind"], "Pod");
    assert_eq!(e["regarding"]["name"], "kube-apiserver-m1");
    assert_eq!(e["regarding"]["namespace"], "openshift-kube-apiserver");
    assert_eq!(e["regarding"]["uid"], pod["metadata"]["uid"]);
    assert!(
        e.get("series").is_none(),
        "a new event has no series: {e:#}"
    );
    // The note is what the daemon printed for the verdict, which ends with the fix.
    let note = e["note"].as_str().expect("note");
    assert!(note.len() <= 1024, "{}", note.len());
    let printed: Vec<Value> = d
        .events()
        .iter()
        .filter_map(|l| l.get("verdict"))
        .filter(|v| {
            v["instance"] == "m1"
                && v["cause"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("refused"))
        })
        .cloned()
        .collect();
    assert!(
        printed.iter().any(|v| {
            let (Some(s), Some(f), Some(n)) = (
                v["sentence"].as_str(),
                v["fix"].as_str(),
                v["count"].as_u64(),
            ) else {
                return false;
            };
            note.starts_with(&format!("{n} disrupted"))
                && note.contains(" on m1: ")
                && note.ends_with(s)
                && s.ends_with(&format!("; fix: {f}"))
        }),
        "note {note:?} is none of the printed verdicts {printed:#?}"
    );

    // m1 stays down and the prober keeps being refused: the verdict grows,
    // and its event's series counts it, no new event (one write per 10 s).
    let grown = common::wait_for(
        Duration::from_secs(30),
        "the refused event's series.count to reach 2",
        || {
            let l = get_events();
            let r = refused_events(&l);
            if r.len() == 1 && r[0]["series"]["count"].as_i64().is_some_and(|c| c >= 2) {
                Ok(r)
            } else {
                Err(format!("{r:#?}"))
            }
        },
    );
    let g = &grown[0];
    assert_eq!(g["metadata"]["name"], e["metadata"]["name"]);
    assert_eq!(g["metadata"]["uid"], e["metadata"]["uid"]);
    assert_eq!(g["note"], e["note"], "the note is immutable");
    assert!(
        g["series"]["lastObservedTime"].as_str() > e["eventTime"].as_str(),
        "{g:#}"
    );
    let updates = d
        .events()
        .iter()
        .filter(|l| {
            l["update"] == true
                && l["verdict"]["instance"] == "m1"
                && l["verdict"]["cause"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("refused"))
        })
        .count() as i64;
    let count = g["series"]["count"].as_i64().expect("count");
    assert!(
        (2..=updates + 1).contains(&count),
        "series.count {count} counts the verdict's prints (1 + {updates} updates)"
    );
    let disruptions: u64 = g["metadata"]["annotations"]["drainwatch.io/disruptions"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("disruptions annotation");
    let at_create: u64 = note
        .split(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("count in note");
    assert!(disruptions > at_create, "{disruptions} > {at_create}");

    let m = d.metrics();
    let kev = |r: &str| {
        parse_metric(
            &m,
            &format!("drainwatch_kube_events_total{{result=\"{r}\"}}"),
        )
    };
    assert!(kev("created") >= 1.0 && kev("updated") >= 1.0, "{m}");
    assert_eq!(kev("failed"), 0.0, "{m}");
    assert_eq!(kev("dropped"), 0.0, "{m}");
    assert_eq!(
        parse_metric(&m, "drainwatch_source_up{source=\"kube_events\"}"),
        1.0
    );
    // Plain `kubectl get events` reads core/v1, where kube-apiserver serves the
    // same objects converted: the event as kubectl prints it, cell by cell.
    let core = kubectl_json(&pair, &kc, &["get", "events", ns[0], ns[1]]);
    assert_eq!(core["apiVersion"], "v1");
    let c = refused_events(&core);
    assert_eq!(c.len(), 1, "{core:#}");
    let c = &c[0];
    assert_eq!(c["apiVersion"], "v1");
    assert_eq!(c["metadata"]["uid"], e["metadata"]["uid"]);
    assert_eq!(c["message"], e["note"]);
    assert_eq!(c["involvedObject"], e["regarding"]);
    assert_eq!(c["reportingComponent"], "drainwatch.io/drainwatch");
    assert_eq!(c["reportingInstance"], "node-m1");
    assert_eq!(c["eventTime"], e["eventTime"]);
    assert!(
        c.get("note").is_none() && c.get("regarding").is_none(),
        "{c:#}"
    );
    let before = c["series"]["count"].as_i64().expect("series in core/v1");
    assert!(before >= 2, "{c:#}");
    let plain = kubectl_table(&pair, &kc, &["get", "events", ns[0], ns[1]]);
    let wide = kubectl_table(&pair, &kc, &["get", "events", ns[0], ns[1], "-o", "wide"]);
    let after = refused_events(&kubectl_json(&pair, &kc, &["get", "events", ns[0], ns[1]]))[0]
        ["series"]["count"]
        .as_i64()
        .expect("count");
    let row_of = |t: &[Vec<(String, String)>]| -> Vec<(String, String)> {
        let rows: Vec<_> = t
            .iter()
            .filter(|r| {
                r.iter()
                    .any(|(h, v)| h == "REASON" && v == "ConnectionsRefused")
            })
            .cloned()
            .collect();
        assert_eq!(rows.len(), 1, "{t:#?}");
        rows[0].clone()
    };
    let r = row_of(&plain);
    let heads: Vec<&str> = r.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(heads, ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]);
    let note = e["note"].as_str().expect("note").trim();
    assert_eq!(r[1].1, "Warning");
    assert_eq!(r[3].1, "pod/kube-apiserver-m1");
    assert_eq!(r[4].1, note);
    let w = row_of(&wide);
    let heads: Vec<&str> = w.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(
        heads,
        [
            "LAST SEEN",
            "TYPE",
            "REASON",
            "OBJECT",
            "SUBOBJECT",
            "SOURCE",
            "MESSAGE",
            "FIRST SEEN",
            "COUNT",
            "NAME"
        ]
    );
    // kube-apiserver's printer: the source from reportingController and
    // reportingInstance, the count from the series.
    assert_eq!(w[5].1, "drainwatch.io/drainwatch, node-m1");
    assert_eq!(w[6].1, note);
    let count: i64 = w[8].1.parse().expect("COUNT");
    assert!(
        (before..=after).contains(&count),
        "{count} in {before}..={after}"
    );
    assert_eq!(w[9].1, e["metadata"]["name"].as_str().expect("name"));
    // What `kubectl get events` prints, for the README.
    eprintln!(
        "{}",
        kubectl_text(&pair, &kc, &["get", "events", ns[0], ns[1]])
    );
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}
