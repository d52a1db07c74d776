//! Endpoint mode (`--apiserver-endpoint`): on a node that is the
//! apiserver's client, only connections to the apiserver's (address, port)
//! pairs are watched, not every connection on the port. Real TCP between
//! two namespaces; the server answers on two addresses of each family on
//! the same port, one of them the endpoint. The kernel programs must report
//! exactly the endpoint's connections, both families, and nothing of the
//! other address's, which are made first: the endpoint's events, read from
//! the same ring buffer after them, are the barrier. With `auto`, the
//! `kubernetes` EndpointSlice that the lab's apiserver stand-in serves adds
//! its endpoints, on their own port.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
};

use common::{Daemon, KillOnDrop, Pair, add_addrs, of_kind, root_or_skip, serial};

const PORT: u16 = 7443;
const PER_ADDRESS: usize = 3;

/// One request and its answer on a new connection to `to`, then a close.
fn exchange(to: SocketAddr) {
    let mut c = TcpStream::connect(to).unwrap_or_else(|e| panic!("connect {to}: {e}"));
    c.write_all(b"hi").expect("write");
    let mut b = [0u8; 2];
    c.read_exact(&mut b).expect("answer");
}

#[test]
fn only_the_endpoints_connections_are_reported_in_both_families() {
    let _g = serial();
    if !root_or_skip("only_the_endpoints_connections_are_reported_in_both_families") {
        return;
    }
    let pair = Pair::new();
    // A second address of each family on the server, same link.
    let n = pair.server_v4.split('.').nth(2).expect("octet").to_string();
    let (other_c4, other_s4) = (format!("198.19.{n}.1"), format!("198.19.{n}.2"));
    let (other_c6, other_s6) = (format!("2001:2:1:{n}::1"), format!("2001:2:1:{n}::2"));
    let client_dev = format!(
        "dwc{}",
        pair.server_dev
            .strip_prefix("dws")
            .expect("server dev name")
    );
    for (ns, dev, v4, v6) in [
        (&pair.client, &client_dev, &other_c4, &other_c6),
        (&pair.server, &pair.server_dev, &other_s4, &other_s6),
    ] {
        add_addrs(ns, dev, &format!("{v4}/24"), &format!("{v6}/64"));
    }
    let watched4: SocketAddr = format!("{}:{PORT}", pair.server_v4).parse().expect("v4");
    let watched6: SocketAddr = format!("[{}]:{PORT}", pair.server_v6).parse().expect("v6");
    let other4: SocketAddr = format!("{other_s4}:{PORT}").parse().expect("v4");
    let other6: SocketAddr = format!("[{other_s6}]:{PORT}").parse().expect("v6");

    let d = Daemon::start_in(
        Some(&pair.server),
        &[
            "--netns",
            "self",
            "--apiserver-endpoint",
            &watched4.to_string(),
            "--apiserver-endpoint",
            &watched6.to_string(),
            "--no-kube",
        ],
    );
    assert!(
        d.stderr()
            .contains(&format!("endpoint mode: watching only {watched4}")),
        "{}",
        d.stderr()
    );
    // One dual-stack listener, as kube-apiserver binds: IPv4 clients arrive
    // as IPv4-mapped sockets and must still match the IPv4 endpoint.
    let listener = Pair::run_in(&pair.server, move || {
        TcpListener::bind(format!("[::]:{PORT}")).expect("bind [::]")
    });
    let total = 4 * PER_ADDRESS;
    let srv = std::thread::spawn(move || {
        for _ in 0..total {
            let (mut s, _) = listener.accept().expect("accept");
            let mut b = [0u8; 2];
            s.read_exact(&mut b).expect("request");
            s.write_all(b"ok").expect("answer");
            // Until the client's close.
            let _ = s.read(&mut b);
        }
    });
    pair.in_client(move || {
        for to in [other4, other6, watched4, watched6] {
            for _ in 0..PER_ADDRESS {
                exchange(to);
            }
        }
    });
    srv.join().expect("server");

    let client4 = pair.client_v4.clone();
    let client6 = pair.client_v6.clone();
    let evs = d.wait_for(
        &[&client4, &client6, &other_c4, &other_c6],
        "the endpoint's connections accepted",
        |e| of_kind(e, "accepted").len() >= 2 * PER_ADDRESS,
    );
    let accepted: Vec<String> = of_kind(&evs, "accepted")
        .iter()
        .map(|e| e["local"].as_str().expect("local").to_string())
        .collect();
    let want: Vec<String> = [watched4; PER_ADDRESS]
        .iter()
        .chain([watched6; PER_ADDRESS].iter())
        .map(ToString::to_string)
        .collect();
    assert_eq!(accepted, want, "events: {evs:#?}");
    // Nothing at all of the other addresses, whatever the kind.
    let stray: Vec<&serde_json::Value> = evs
        .iter()
        .filter(|e| {
            [&other_c4, &other_c6, &other_s4, &other_s6]
                .iter()
                .any(|a| {
                    ["local", "remote"]
                        .iter()
                        .any(|k| e[k].as_str().is_some_and(|s| s.contains(a.as_str())))
                })
        })
        .collect();
    assert!(
        stray.is_empty(),
        "reported outside the endpoints: {stray:#?}"
    );
    let (st, _) = d.stop_collect();
    assert!(st.success());
}

/// `run --check` says endpoint mode is on and lists what each endpoint
/// resolved to, and where it came from.
#[test]
fn check_lists_the_endpoints_and_their_origin() {
    let _g = serial();
    if !root_or_skip("check_lists_the_endpoints_and_their_origin") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_drainwatch"))
        .args([
            "run",
            "--check",
            "--no-kube",
            "--apiserver-endpoint",
            "198.18.0.100:6443",
            "--apiserver-endpoint",
            "[fd00::100]:443",
        ])
        .output()
        .expect("drainwatch run --check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ports       [443, 6443]"), "{text}");
    assert!(
        text.contains("watching    only these apiserver endpoints on them"),
        "{text}"
    );
    assert!(
        text.contains("  198.18.0.100:6443 (from 198.18.0.100:6443 (--apiserver-endpoint))"),
        "{text}"
    );
    assert!(
        text.contains("  [fd00::100]:443 (from [fd00::100]:443 (--apiserver-endpoint))"),
        "{text}"
    );
    // A bad value names itself.
    let bad = Command::new(env!("CARGO_BIN_EXE_drainwatch"))
        .args(["run", "--check", "--apiserver-endpoint", "fd00::1:443"])
        .output()
        .expect("drainwatch run");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains(
            "--apiserver-endpoint \"fd00::1:443\": expected HOST:PORT, [IPv6]:PORT or auto"
        ),
        "{err}"
    );
}

/// `auto` with a kubeconfig naming the lab's apiserver stand-in, which
/// publishes a `kubernetes` EndpointSlice whose endpoint is another address
/// on another port (as a managed cluster's Service leads to a public
/// address, or a master's 6443): `--check` lists the endpoint as the
/// slice's (and says so when the API does not answer, without failing),
/// its port is watched, and the daemon reports exactly the connections to
/// it, none to another address on the same port.
#[test]
fn auto_watches_the_kubernetes_endpointslice() {
    let _g = serial();
    if !root_or_skip("auto_watches_the_kubernetes_endpointslice") {
        return;
    }
    let pair = Pair::new();
    let n = pair.server_v4.split('.').nth(2).expect("octet").to_string();
    let client = format!("198.19.{n}.1");
    let (endpoint, other) = (format!("198.19.{n}.2"), format!("198.19.{n}.3"));
    let client_dev = format!(
        "dwc{}",
        pair.server_dev
            .strip_prefix("dws")
            .expect("server dev name")
    );
    sh_ns(
        &pair.client,
        &["addr", "add", &format!("{client}/24"), "dev", &client_dev],
    );
    for a in [&endpoint, &other] {
        sh_ns(
            &pair.server,
            &["addr", "add", &format!("{a}/24"), "dev", &pair.server_dev],
        );
    }
    let endpoint: SocketAddr = format!("{endpoint}:{PORT}").parse().expect("endpoint");
    let other: SocketAddr = format!("{other}:{PORT}").parse().expect("other");
    let dir = std::env::temp_dir().join(format!("dwt-endpointslice-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let kubeconfig = common::standin_kubeconfig(&pair, &dir, "t");
    let kc = kubeconfig.to_str().expect("utf8").to_string();
    let check = || {
        common::drainwatch_in(&pair.server)
            .args([
                "run",
                "--check",
                "--netns",
                "self",
                "--apiserver-endpoint",
                "auto",
                "--kubeconfig",
                &kc,
                "--no-go-uprobes",
            ])
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBECONFIG")
            .output()
            .expect("drainwatch run --check")
    };
    let slice = "the kubernetes EndpointSlice (default, kubernetes.io/service-name=kubernetes)";
    let server = format!("{}:6443", pair.server_v4);
    let standin_args = [
        "--name",
        "m1",
        "--listen",
        &server,
        "--san",
        &pair.server_v4,
        "--startup-delay",
        "100ms",
        "--advertise",
        &endpoint.to_string(),
    ];
    // The stand-in once, for its CA, then gone: nothing answers the API,
    // so the slice is not read, which is said and not fatal; the
    // kubeconfig's server is watched all the same.
    drop(KillOnDrop(common::start_standin(
        &pair.server,
        &dir,
        &standin_args,
    )));
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ports       [6443]\n"), "{text}");
    assert!(
        text.contains(&format!(
            "  {server} (from {server} (the server of {kc}))\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("  {slice}: not read (--kubeconfig {kc}: ")),
        "{text}"
    );

    let _standin = KillOnDrop(common::start_standin(&pair.server, &dir, &standin_args));
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("ports       [6443, {PORT}]\n")),
        "{text}"
    );
    let lines: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("watching"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(
        lines,
        vec![
            format!("  {server} (from {server} (the server of {kc}))"),
            format!("  {endpoint} (from EndpointSlice default/kubernetes)"),
        ],
        "{text}"
    );

    let d = Daemon::start_in(
        Some(&pair.server),
        &[
            "--netns",
            "self",
            "--apiserver-endpoint",
            "auto",
            "--kubeconfig",
            &kc,
            "--no-kube-events",
            "--no-go-uprobes",
        ],
    );
    assert!(
        d.stderr().contains(&format!(
            "{endpoint} (from EndpointSlice default/kubernetes)"
        )),
        "{}",
        d.stderr()
    );
    assert_eq!(
        d.metric("drainwatch_apiserver_endpoints{source=\"endpointslice\"}"),
        1.0
    );
    assert_eq!(
        d.metric("drainwatch_endpointslice_reads_total{result=\"ok\"}"),
        1.0
    );
    let listeners: Vec<TcpListener> = [other, endpoint]
        .iter()
        .map(|a| {
            let a = *a;
            Pair::run_in(&pair.server, move || {
                TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"))
            })
        })
        .collect();
    let servers: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            std::thread::spawn(move || {
                for _ in 0..PER_ADDRESS {
                    let (mut s, _) = l.accept().expect("accept");
                    let mut b = [0u8; 2];
                    s.read_exact(&mut b).expect("request");
                    s.write_all(b"ok").expect("answer");
                    let _ = s.read(&mut b);
                }
            })
        })
        .collect();
    pair.in_client(move || {
        for to in [other, endpoint] {
            for _ in 0..PER_ADDRESS {
                exchange(to);
            }
        }
    });
    for s in servers {
        s.join().expect("server");
    }
    let evs = d.wait_for(&[&client], "the slice endpoint's connections", |e| {
        of_kind(e, "accepted").len() >= PER_ADDRESS
    });
    let accepted: Vec<&str> = of_kind(&evs, "accepted")
        .iter()
        .map(|e| e["local"].as_str().expect("local"))
        .collect();
    let want = endpoint.to_string();
    assert_eq!(
        accepted,
        vec![want.as_str(); PER_ADDRESS],
        "events: {evs:#?}"
    );
    let other_ip = other.ip().to_string();
    let stray: Vec<&serde_json::Value> = evs
        .iter()
        .filter(|e| {
            ["local", "remote"]
                .iter()
                .any(|k| e[k].as_str().is_some_and(|s| s.contains(&other_ip)))
        })
        .collect();
    assert!(
        stray.is_empty(),
        "reported outside the endpoints: {stray:#?}"
    );
    let (st, _) = d.stop_collect();
    assert!(st.success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ip -n NS ARGS...`.
fn sh_ns(ns: &str, args: &[&str]) {
    let mut all = vec!["ip", "-n", ns];
    all.extend_from_slice(args);
    common::sh(&all);
}
