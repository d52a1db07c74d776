//! `drainwatch cluster` end to end: three "masters", each a network
//! namespace with the lab's apiserver stand-in and its own drainwatch daemon
//! (metrics and API on loopback there, as a hostNetwork pod's on its node),
//! roll one after another. A fourth stand-in on the host's loopback plays
//! the cluster's API: the test registers the three daemons as pods of the
//! DaemonSet (labels, node name, the `metrics` container port, and the lab
//! annotation naming the namespace the pod's loopback is in), plus a pod
//! without the labels. `drainwatch cluster` finds them through the pod
//! objects and reads each API through the stand-in's real port-forward
//! endpoint (WebSocket, v4.channel.k8s.io), which dials loopback inside the
//! pod's namespace as the kubelet does; its lifecycle records prove each
//! read went through it. What is substituted, and why: kube-apiserver
//! proxies port-forward to the pod's kubelet, which asks the container
//! runtime for the pod sandbox's network namespace; there is no kubelet or
//! runtime here, so the stand-in serves the endpoint itself and learns the
//! namespace from the pod's `lab.drainwatch.io/netns` annotation. The client
//! side (kube-rs in `drainwatch cluster`) and the protocol are the real ones. The merged timeline is exactly the union of the
//! daemons' own /api/v1/timelines, and of their recordings replayed by
//! `analyze`; the verdicts carry their node; the HTML report has one lane
//! per master and renders in headless Chromium.

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Daemon, KillOnDrop, Pair, root_or_skip, serial};
use serde_json::{Value, json};

const MASTERS: usize = 3;

fn api_json(d: &Daemon, path: &str) -> Value {
    let (code, body) = d.get(path);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// (apiserver, node, cycle, phase, wall, inferred) rows of a timelines list.
type Row = (String, String, u64, String, String, bool);

fn rows_of_daemon(timelines: &Value, node: &str) -> Vec<Row> {
    let mut out = Vec::new();
    for t in timelines.as_array().expect("timelines") {
        for p in t["phases"].as_array().expect("phases") {
            out.push((
                t["instance"].as_str().expect("instance").to_string(),
                node.to_string(),
                t["cycle"].as_u64().expect("cycle"),
                p["kind"].as_str().expect("kind").to_string(),
                p["wall"]
                    .as_str()
                    .expect("every phase has a wall time")
                    .to_string(),
                p["inferred"].as_bool().expect("inferred"),
            ));
        }
    }
    out
}

fn rows_of_cluster(view: &Value) -> Vec<Row> {
    let mut out = Vec::new();
    for t in view["timelines"].as_array().expect("timelines") {
        for p in t["phases"].as_array().expect("phases") {
            out.push((
                t["apiserver"].as_str().expect("apiserver").to_string(),
                t["node"].as_str().expect("node").to_string(),
                t["cycle"].as_u64().expect("cycle"),
                p["kind"].as_str().expect("kind").to_string(),
                p["wall"].as_str().expect("wall").to_string(),
                p["inferred"].as_bool().expect("inferred"),
            ));
        }
    }
    out
}

/// `drainwatch cluster ARGS` (or the binary under another name): stdout,
/// after checking it exited 0.
fn cluster(bin: &Path, kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .arg("cluster")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("DRAINWATCH_LOG", "warn")
        .output()
        .expect("drainwatch cluster");
    assert!(
        out.status.success(),
        "drainwatch cluster {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The cluster stand-in's port-forward records.
fn port_forwards(truth: &Path) -> Vec<Value> {
    std::fs::read_to_string(truth)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["event"] == "port_forward")
        .collect()
}

fn register_pods(kubeconfig: &Path, pods: Vec<Value>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        let client = kube::Client::try_from(config).expect("client");
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(client, "drainwatch");
        for p in pods {
            let pod = serde_json::from_value(p).expect("pod");
            api.create(&Default::default(), &pod)
                .await
                .expect("create pod");
        }
    });
}

#[test]
fn cluster_view_merges_every_masters_daemon_through_the_port_forward_endpoint() {
    let _g = serial();
    if !root_or_skip("cluster_view_merges_every_masters_daemon_through_the_port_forward_endpoint") {
        return;
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_drainwatch"));
    let root = std::env::temp_dir().join(format!("dwt-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);

    // The masters: a stand-in and a daemon in each namespace.
    let mut masters = Vec::new();
    for i in 1..=MASTERS {
        let pair = Pair::new();
        let name = format!("m{i}");
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir).expect("dir");
        let listen = format!("{}:6443", pair.server_v4);
        let standin = KillOnDrop(common::start_standin(
            &pair.server,
            &dir,
            &[
                "--name",
                &name,
                "--mode",
                "graceful",
                "--listen",
                &listen,
                "--shutdown-delay",
                "1s",
                "--request-timeout",
                "1s",
                "--startup-delay",
                "100ms",
                "--san",
                &pair.server_v4,
            ],
        ));
        let probe_kc = common::standin_kubeconfig(&pair, &dir, "probe");
        let url = format!("https://{listen}/");
        let ca = dir.join("pki/ca.crt");
        let d = Daemon::start_in(
            Some(&pair.server),
            &[
                "--no-wire",
                "--netns",
                "self",
                "--instance",
                &name,
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
                "--node-name",
                &format!("node-{name}"),
                "--no-kube-events",
                "--record",
                dir.join("record.jsonl").to_str().expect("utf8"),
            ],
        );
        masters.push((pair, name, standin, d));
    }

    // Roll them one after another, each once its predecessor's daemon has
    // the whole shutdown in its timeline (a rolling restart's order).
    for (_, name, standin, d) in &mut masters {
        // SAFETY: signalling the stand-in we started.
        unsafe { libc::kill(standin.0.id() as i32, libc::SIGTERM) };
        let _ = standin.0.wait();
        common::wait_for(
            Duration::from_secs(20),
            &format!("{name}'s timeline with sigterm, listener_closed and exit"),
            || {
                let v = api_json(d, "/api/v1/timelines");
                let kinds: Vec<String> = v["timelines"][0]["phases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["kind"].as_str().map(String::from))
                    .collect();
                if ["sigterm", "listener_closed", "exit"]
                    .iter()
                    .all(|k| kinds.iter().any(|x| x == k))
                {
                    Ok(())
                } else {
                    Err(v.to_string())
                }
            },
        );
    }

    // The cluster's API, and the DaemonSet's pods in it.
    let api_dir = root.join("api");
    std::fs::create_dir_all(&api_dir).expect("dir");
    let api_port = common::free_port();
    let api_listen = format!("127.0.0.1:{api_port}");
    let _api = KillOnDrop(common::start_standin_here(
        &api_dir,
        &[
            "--name",
            "api",
            "--listen",
            &api_listen,
            "--san",
            "127.0.0.1",
            "--startup-delay",
            "100ms",
            "--token",
            "admin",
        ],
    ));
    let truth = api_dir.join("lifecycle.jsonl");
    let kc = api_dir.join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: https://{api_listen}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: admin\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: admin\ncurrent-context: lab\n",
            api_dir.join("pki/ca.crt").display()
        ),
    )
    .expect("kubeconfig");
    let mut pods: Vec<Value> = masters
        .iter()
        .enumerate()
        .map(|(i, (pair, name, _, d))| {
            json!({
                "metadata": {"name": format!("drainwatch-{}", ["xk2p9", "b7q4w", "r5t8z"][i]),
                    "labels": {"app.kubernetes.io/name": "drainwatch", "app.kubernetes.io/component": "node-observer"},
                    "annotations": {"lab.drainwatch.io/netns": pair.server}},
                "spec": {"nodeName": format!("node-{name}"), "hostNetwork": true,
                    "containers": [{"name": "drainwatch", "image": "drainwatch:latest",
                        "ports": [{"name": "metrics", "containerPort": d.metrics_addr.port()}]}]},
                "status": {"phase": "Running", "podIP": pair.server_v4}
            })
        })
        .collect();
    // Not one of the DaemonSet's: never read.
    pods.push(
        json!({"metadata": {"name": "grafana-0", "labels": {"app.kubernetes.io/name": "grafana"}},
        "spec": {"nodeName": "node-m1", "containers": [{"name": "grafana"}]},
        "status": {"phase": "Running"}}),
    );
    register_pods(&kc, pods);

    // Each daemon's own answer, before and after the cluster reads: the
    // timelines are settled (all three stand-ins are gone).
    let own = |masters: &Vec<(Pair, String, KillOnDrop, Daemon)>| -> Vec<Row> {
        let mut rows: Vec<Row> = masters
            .iter()
            .flat_map(|(_, name, _, d)| {
                rows_of_daemon(
                    &api_json(d, "/api/v1/timelines")["timelines"],
                    &format!("node-{name}"),
                )
            })
            .collect();
        rows.sort();
        rows
    };
    let before = own(&masters);
    let started = Instant::now();
    let view: Value =
        serde_json::from_str(&cluster(&bin, &kc, &["timeline", "-o", "json"])).expect("JSON view");
    let took = started.elapsed();
    let after = own(&masters);
    assert_eq!(
        before, after,
        "the daemons' timelines changed while the cluster view was read"
    );
    let mut merged = rows_of_cluster(&view);
    merged.sort();
    assert_eq!(
        merged, before,
        "the merged timeline is the union of every daemon's own"
    );
    let mut nodes: Vec<(String, Value)> = view["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["node"].as_str().expect("node").to_string(),
                n["error"].clone(),
            )
        })
        .collect();
    nodes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        nodes,
        (1..=MASTERS)
            .map(|i| (format!("node-m{i}"), Value::Null))
            .collect::<Vec<_>>(),
        "{view:#}"
    );
    // One axis: every master's rollout in the order they rolled, offsets
    // from the first SIGTERM.
    let sigterms: Vec<(String, f64)> = view["timelines"]
        .as_array()
        .expect("timelines")
        .iter()
        .map(|t| {
            let s = t["phases"]
                .as_array()
                .expect("phases")
                .iter()
                .find(|p| p["kind"] == "sigterm")
                .expect("sigterm");
            (
                t["apiserver"].as_str().expect("apiserver").to_string(),
                s["offset_s"].as_f64().expect("offset"),
            )
        })
        .collect();
    assert_eq!(
        sigterms.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        (1..=MASTERS).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    assert!(sigterms.windows(2).all(|w| w[0].1 < w[1].1), "{sigterms:?}");
    assert_eq!(view["origin"], view["timelines"][0]["phases"][0]["wall"]);

    // Every read went through the stand-in's port-forward endpoint, once
    // per DaemonSet pod, to the port its pod object names.
    let forwards = common::wait_for(Duration::from_secs(10), "3 port_forward records", || {
        let f = port_forwards(&truth);
        if f.len() >= MASTERS {
            Ok(f)
        } else {
            Err(format!("{f:?}"))
        }
    });
    let mut seen: Vec<(String, u64, String)> = forwards
        .iter()
        .map(|r| {
            let d = &r["detail"];
            assert!(d.get("error").is_none(), "{r}");
            assert!(
                d["from_pod"].as_u64().is_some_and(|b| b > 0)
                    && d["to_pod"].as_u64().is_some_and(|b| b > 0),
                "{r}"
            );
            (
                d["pod"].as_str().expect("pod").to_string(),
                d["port"].as_u64().expect("port"),
                d["netns"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    seen.sort();
    let mut want: Vec<(String, u64, String)> = masters
        .iter()
        .enumerate()
        .map(|(i, (pair, _, _, d))| {
            (
                format!("drainwatch-{}", ["xk2p9", "b7q4w", "r5t8z"][i]),
                u64::from(d.metrics_addr.port()),
                pair.server.clone(),
            )
        })
        .collect();
    want.sort();
    assert_eq!(seen, want);

    // The table: one row per phase, the three masters on one axis.
    let text = cluster(&bin, &kc, &["timeline"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["+SECONDS", "TIME", "APISERVER", "NODE", "ROLLOUT", "PHASE"]
    );
    assert_eq!(lines.len() - 1, merged.len(), "{text}");
    let offsets: Vec<f64> = lines[1..]
        .iter()
        .map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|o| o.parse().ok())
                .expect("offset")
        })
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{text}");
    eprintln!("{text}");

    // As a kubectl plugin: `kubectl drainwatch timeline` runs the binary
    // named kubectl-drainwatch from PATH.
    let plugin_dir = root.join("plugin");
    std::fs::create_dir_all(&plugin_dir).expect("dir");
    std::os::unix::fs::symlink(&bin, plugin_dir.join("kubectl-drainwatch")).expect("symlink");
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("/usr/bin/kubectl")
        .args(["drainwatch", "timeline"])
        .env("PATH", path)
        .env("KUBECONFIG", &kc)
        .env("DRAINWATCH_LOG", "warn")
        .output()
        .expect("kubectl drainwatch");
    assert!(
        out.status.success(),
        "kubectl drainwatch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plugin_text = String::from_utf8(out.stdout).expect("UTF-8");
    let strip = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(
        strip(&plugin_text),
        strip(&text),
        "the plugin prints what `drainwatch cluster timeline` does"
    );

    // Verdicts: each daemon's, with its node.
    let vview: Value =
        serde_json::from_str(&cluster(&bin, &kc, &["verdicts", "-o", "json"])).expect("JSON");
    for (_, name, _, d) in &masters {
        let own: BTreeSet<(String, u64)> = api_json(d, "/api/v1/verdicts")["verdicts"]
            .as_array()
            .expect("verdicts")
            .iter()
            .map(|v| {
                (
                    v["cause"].as_str().expect("cause").to_string(),
                    v["window"][0].as_u64().expect("start"),
                )
            })
            .collect();
        let merged: BTreeSet<(String, u64)> = vview["verdicts"]
            .as_array()
            .expect("verdicts")
            .iter()
            .filter(|v| v["node"] == format!("node-{name}").as_str())
            .map(|v| {
                (
                    v["verdict"]["cause"].as_str().expect("cause").to_string(),
                    v["verdict"]["window"][0].as_u64().expect("start"),
                )
            })
            .collect();
        assert!(
            !own.is_empty(),
            "{name}: the prober's refusals make a verdict"
        );
        // Started verdicts only grow (count, end), so their starts match.
        assert!(
            merged.iter().all(|m| own.contains(m)) && merged.len() == own.len(),
            "{name}: {merged:?} vs {own:?}"
        );
    }

    // The HTML report: one lane per master on one axis.
    let html = root.join("cluster.html");
    let said = cluster(&bin, &kc, &["report", "-o", html.to_str().expect("utf8")]);
    assert!(said.contains(&format!("{MASTERS} master(s)")), "{said}");
    let page = std::fs::read_to_string(&html).expect("report");
    let lanes: Vec<&str> = page
        .match_indices("<text class=\"lane\"")
        .map(|(i, _)| {
            let rest = &page[i..];
            let s = rest.find('>').expect("tag end") + 1;
            &rest[s..s + rest[s..].find('<').expect("text end")]
        })
        .collect();
    assert_eq!(lanes, ["m1 lifecycle", "m2 lifecycle", "m3 lifecycle"]);
    // One axis spanning the rollouts: each master's SIGTERM band starts
    // further right than the one before, the first at the axis' start.
    let sigterm_x: Vec<f64> = (1..=MASTERS)
        .map(|i| {
            let tag = format!("data-phase=\"sigterm\" data-instance=\"m{i}\" x=\"");
            let at = page
                .find(&tag)
                .unwrap_or_else(|| panic!("no sigterm band of m{i}"))
                + tag.len();
            page[at..at + page[at..].find('"').expect("x")]
                .parse()
                .expect("x")
        })
        .collect();
    assert!(
        sigterm_x.windows(2).all(|w| w[0] + 20.0 < w[1]),
        "{sigterm_x:?}"
    );
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "self-contained"
    );
    screenshot(&html, &root);

    // A DaemonSet pod whose API cannot be reached (nothing listens on its
    // port): named on stderr with the port-forward's own reason, exit 1,
    // and what the others said still printed.
    let dead_port = common::free_port();
    register_pods(
        &kc,
        vec![json!({
            "metadata": {"name": "drainwatch-zz9dd",
                "labels": {"app.kubernetes.io/name": "drainwatch"}},
            "spec": {"nodeName": "node-m4", "hostNetwork": true,
                "containers": [{"name": "drainwatch",
                    "ports": [{"name": "metrics", "containerPort": dead_port}]}]},
            "status": {"phase": "Running"}
        })],
    );
    let out = Command::new(&bin)
        .arg("cluster")
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["timeline", "-o", "json"])
        .env("DRAINWATCH_LOG", "warn")
        .output()
        .expect("drainwatch cluster");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "drainwatch cluster: pod drainwatch-zz9dd on node node-m4: port-forward to \
         drainwatch-zz9dd:{dead_port}: error forwarding port {dead_port} to pod drainwatch-zz9dd, uid "
    );
    assert!(stderr.starts_with(&want), "{stderr}");
    assert!(
        stderr
            .trim_end()
            .ends_with("Connection refused (os error 111)"),
        "{stderr}"
    );
    let partial: Value = serde_json::from_slice(&out.stdout).expect("JSON despite the failure");
    let mut rows = rows_of_cluster(&partial);
    rows.sort();
    assert_eq!(rows, before);
    assert_eq!(
        partial["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter(|n| n["error"].is_string())
            .map(|n| n["node"].clone())
            .collect::<Vec<_>>(),
        [json!("node-m4")]
    );

    // Each daemon's recording, replayed by `analyze`, gives the timelines
    // the cluster view merged.
    let mut replayed = Vec::new();
    for (_, name, _, d) in masters.drain(..) {
        assert!(d.stop().success(), "{name}'s daemon exit");
        let rec = root.join(&name).join("record.jsonl");
        let out = Command::new(&bin)
            .arg("analyze")
            .arg(&rec)
            .args(["--output", "json"])
            .output()
            .expect("analyze");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "analyze {}: {e}: {}",
                rec.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        replayed.extend(rows_of_daemon(
            &report["timelines"],
            &format!("node-{name}"),
        ));
    }
    replayed.sort();
    assert_eq!(
        replayed, merged,
        "analyze of the recordings vs the cluster view"
    );

    let total = port_forwards(&truth).len();
    eprintln!(
        "cluster view of {MASTERS} daemons read in {took:?}; {} phases; {total} port-forward connections in all",
        merged.len()
    );
    drop(masters);
    let _ = std::fs::remove_dir_all(&root);
}

/// Headless Chromium renders the report (as ops's report test does): a
/// 1400x900 PNG that is a picture, not a blank page.
fn screenshot(html: &Path, dir: &Path) {
    let Some(browser) = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }) else {
        assert!(
            std::env::var_os("DRAINWATCH_NO_SKIP").is_none(),
            "no chromium on PATH: DRAINWATCH_NO_SKIP is set"
        );
        eprintln!(
            "SKIPPED the cluster report's screenshot: no chromium on PATH (apt-get install chromium)"
        );
        return;
    };
    let png = dir.join("shot.png");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chromium");
    // Waits on chromium's exit itself; a watchdog kills it after 60 s, which
    // only bounds a hang.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let hung = done_rx.recv_timeout(Duration::from_secs(60)).is_err();
        if hung {
            // SAFETY: signalling the child this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        hung
    });
    let status = child.wait().expect("wait for chromium");
    let _ = done_tx.send(());
    assert!(
        !watchdog.join().expect("watchdog"),
        "chromium did not finish within 60 s"
    );
    assert!(status.success(), "chromium exited with {status}");
    let bytes = std::fs::read(&png).expect("screenshot");
    let mut reader = png::Decoder::new(std::io::Cursor::new(&bytes))
        .read_info()
        .expect("PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("frame");
    assert_eq!((info.width, info.height), (1400, 900));
    let px = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    let differing = pixels.iter().filter(|p| **p != pixels[0]).count();
    assert!(
        differing * 20 > pixels.len(),
        "screenshot almost one colour: {differing} of {}",
        pixels.len()
    );
    if let Some(keep) = std::env::var_os("DW_CLUSTER_SCREENSHOT") {
        let _ = std::fs::copy(&png, keep);
    }
}
