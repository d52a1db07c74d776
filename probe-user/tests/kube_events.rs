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

/// `kubectl ... -o json` against a stand-in on loopback, with the test's
/// own discovery cache.
fn kubectl_here(kubeconfig: &std::path::Path, args: &[&str]) -> Value {
    let out = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
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

/// An idle-reset verdict from a worker, as the engine words it, hurting
/// `affected`.
fn idle_verdict(affected: Vec<drainwatch_correlate::Affected>) -> drainwatch_correlate::Verdict {
    let count = affected.iter().map(|a| a.count).sum();
    drainwatch_correlate::Verdict {
        cause: drainwatch_correlate::Cause::IdleResetByMiddlebox,
        instance: Some("198.19.0.2".into()),
        cycle: None,
        window: (10_000_000_000, 14_000_000_000),
        window_wall: (Some("2026-12-07T14:00:10.000000Z".into()), None),
        count,
        evidence: vec![1, 2],
        sentence: format!(
            "a middlebox reset {count} idle connections to 198.19.0.2 after 4.0 s of silence: its idle timeout is 4.0 s; {count} had no TCP keepalive; hurt: ...; fix: ..."
        ),
        fix: "enable TCP keepalive".into(),
        measured: None,
        affected,
        affected_more: 0,
    }
}

/// A verdict that names a pod it hurt is told to that pod's owners: one
/// event in the pod's namespace regarding the pod (what `kubectl get events
/// -n NS` and `kubectl describe pod` show), related to the verdict's own
/// event, with the pod's connections and its own fix; it grows with the
/// pod's count. A verdict that hurt only a host process tells no pod.
/// The writer task is driven directly (no kernel: no root needed), against
/// the lab's stand-in on loopback, read back by real kubectl.
#[test]
fn a_verdict_tells_the_pods_it_hurt_where_their_owners_look() {
    use drainwatch::{
        export::{kube_events, metrics::Metrics},
        sources::kubewatch::{Credentials, KnownPods, PodWatch},
    };
    use drainwatch_correlate::Affected;

    let dir = std::env::temp_dir().join(format!("dwt-kevents-pods-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let listen = format!("127.0.0.1:{}", common::free_port());
    let _api = common::KillOnDrop(common::start_standin_here(
        &dir,
        &[
            "--name",
            "api",
            "--listen",
            &listen,
            "--san",
            "127.0.0.1",
            "--startup-delay",
            "100ms",
            "--token",
            "admin",
        ],
    ));
    let kc = dir.join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: https://{listen}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: admin\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: admin\ncurrent-context: lab\n",
            dir.join("pki/ca.crt").display()
        ),
    )
    .expect("kubeconfig");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // The hurt pod exists, with the uid the API gave it.
    let uid = rt.block_on(async {
        let kconf = kube::config::Kubeconfig::read_from(&kc).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kconf, &Default::default())
            .await
            .expect("config");
        let client = kube::Client::try_from(config).expect("client");
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(client, "team-a");
        let pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "py-watcher", "namespace": "team-a"},
            "spec": {"nodeName": "worker-1",
                "containers": [{"name": "watcher", "image": "python:3.12"}]}
        }))
        .expect("pod");
        api.create(&Default::default(), &pod)
            .await
            .expect("create pod")
            .metadata
            .uid
            .expect("uid")
    });
    let py = Affected {
        workload: "pod team-a/py-watcher".into(),
        namespace: Some("team-a".into()),
        pod: Some("py-watcher".into()),
        pod_uid: Some(uid.clone()),
        programs: vec!["python3".into()],
        count: 1,
        without_keepalive: Some(1),
    };
    let curl = Affected {
        workload: "process curl".into(),
        namespace: None,
        pod: None,
        pod_uid: None,
        programs: vec!["curl".into()],
        count: 1,
        without_keepalive: Some(1),
    };
    let mut hurt = idle_verdict(vec![py.clone(), curl.clone()]);
    let host_only = idle_verdict(vec![curl]);
    let want_fix = hurt.fix_for(&py);
    assert!(
        want_fix.starts_with("pod team-a/py-watcher: the Python client has no TCP keepalive"),
        "{want_fix}"
    );

    let metrics = std::sync::Arc::new(Metrics::new(&[]).expect("metrics"));
    let (tx, rx) = kube_events::channel(metrics.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = rt.spawn(kube_events::task(
        kube_events::Options {
            pods: PodWatch {
                credentials: Credentials::File(kc.clone()),
                namespace: "kube-system".into(),
                selector: "component=kube-apiserver".into(),
                node: Some("worker-1".into()),
                known: KnownPods::default(),
            },
            node: "worker-1".into(),
        },
        rx,
        metrics.clone(),
        stop_rx,
    ));
    let result = |r: &str| metrics.kube_events.with_label_values(&[r]).get();
    tx.send("idle|hurt", &hurt);
    tx.send("idle|host", &host_only);
    // Two verdicts' events and one pod's.
    common::wait_for(Duration::from_secs(20), "3 events created", || {
        match (result("created"), result("failed")) {
            (3, 0) => Ok(()),
            seen => Err(format!("created, failed: {seen:?}")),
        }
    });
    let all = kubectl_here(&kc, &["get", "events.v1.events.k8s.io", "-A"]);
    let items = all["items"].as_array().expect("items");
    let about: Vec<(&str, &str, &str)> = items
        .iter()
        .map(|e| {
            (
                e["metadata"]["namespace"].as_str().unwrap_or_default(),
                e["regarding"]["kind"].as_str().unwrap_or_default(),
                e["regarding"]["name"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    // The verdicts' events regard the Node (no apiserver pod is known); the
    // host process's verdict tells no pod.
    let mut sorted = about.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            ("kube-system", "Node", "worker-1"),
            ("kube-system", "Node", "worker-1"),
            ("team-a", "Pod", "py-watcher"),
        ],
        "{all:#}"
    );

    // What the pod's owners list: exactly one event, about their pod.
    let theirs = kubectl_here(
        &kc,
        &[
            "get",
            "events.v1.events.k8s.io",
            "-n",
            "team-a",
            "--field-selector",
            "regarding.name=py-watcher",
        ],
    );
    let theirs = theirs["items"].as_array().expect("items").clone();
    assert_eq!(theirs.len(), 1, "{theirs:#?}");
    let e = &theirs[0];
    assert_eq!(e["reason"], "IdleResetByLB");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["action"], "Observed");
    assert_eq!(e["reportingController"], "drainwatch.io/drainwatch");
    assert_eq!(e["reportingInstance"], "worker-1");
    assert_eq!(
        e["regarding"],
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "name": "py-watcher",
            "namespace": "team-a", "uid": uid})
    );
    assert_eq!(
        e["related"],
        serde_json::json!({"apiVersion": "v1", "kind": "Node", "name": "worker-1"})
    );
    assert!(e.get("series").is_none(), "{e:#}");
    assert_eq!(
        e["metadata"]["annotations"]["drainwatch.io/disruptions"],
        "1"
    );
    let note = e["note"].as_str().expect("note");
    assert!(note.len() <= 1024, "{}", note.len());
    assert_eq!(
        note,
        format!(
            "1 connection of this pod (python3; no TCP keepalive), of 2 disrupted in 4.0 s from 2026-12-07T14:00:10.000000Z on 198.19.0.2: a middlebox reset 2 idle connections to 198.19.0.2 after 4.0 s of silence: its idle timeout is 4.0 s; 2 had no TCP keepalive; fix: {want_fix}"
        )
    );
    // The same through core/v1, as `kubectl get events` and `kubectl
    // describe pod` read it (by involvedObject, with the pod's uid).
    let core = kubectl_here(
        &kc,
        &[
            "get",
            "events",
            "-n",
            "team-a",
            "--field-selector",
            &format!("involvedObject.name=py-watcher,involvedObject.uid={uid}"),
        ],
    );
    let core = core["items"].as_array().expect("items").clone();
    assert_eq!(core.len(), 1, "{core:#?}");
    assert_eq!(core[0]["message"], e["note"]);
    assert_eq!(core[0]["metadata"]["uid"], e["metadata"]["uid"]);
    let out = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(&kc)
        .arg("--cache-dir")
        .arg(cache_dir(&kc))
        .args(["describe", "pod", "py-watcher", "-n", "team-a"])
        .output()
        .expect("kubectl describe");
    let described = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{described}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events_part = described
        .split_once("\nEvents:")
        .map(|(_, t)| t)
        .unwrap_or_default();
    assert!(
        events_part.contains("IdleResetByLB") && events_part.contains(&want_fix[..60]),
        "{described}"
    );
    eprintln!("kubectl describe pod:\n{described}");

    // The pod is hurt again: its event's series and count grow (one write
    // per 10 s), the note stays.
    hurt.affected[0].count = 2;
    hurt.count = 3;
    tx.send("idle|hurt", &hurt);
    let grown = common::wait_for(
        Duration::from_secs(30),
        "the pod's event to count 2 connections",
        || {
            let l = kubectl_here(
                &kc,
                &[
                    "get",
                    "events.v1.events.k8s.io",
                    "-n",
                    "team-a",
                    "--field-selector",
                    "regarding.name=py-watcher",
                ],
            );
            match l["items"].as_array().map(|v| v.as_slice()) {
                Some([g]) if g["series"]["count"] == 2 => Ok(g.clone()),
                _ => Err(l.to_string()),
            }
        },
    );
    assert_eq!(grown["metadata"]["uid"], e["metadata"]["uid"]);
    assert_eq!(grown["note"], e["note"], "the note is immutable");
    assert_eq!(
        grown["metadata"]["annotations"]["drainwatch.io/disruptions"],
        "2"
    );
    common::wait_for(Duration::from_secs(5), "both series patched", || {
        match (result("updated"), result("failed")) {
            (2, 0) => Ok(()),
            seen => Err(format!("updated, failed: {seen:?}")),
        }
    });
    assert_eq!(result("created"), 3);
    assert_eq!(result("dropped"), 0);
    assert_eq!(result("capped"), 0);
    let _ = stop_tx.send(true);
    rt.block_on(writer)
        .expect("writer task")
        .expect("writer result");
    let _ = std::fs::remove_dir_all(&dir);
}
