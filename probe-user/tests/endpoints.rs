//! Endpoint mode (`--apiserver-endpoint`): on a node that is the
//! apiserver's client, only connections to the apiserver's (address, port)
//! pairs are watched, not every connection on the port. Real TCP between
//! two namespaces; the server answers on two addresses of each family on
//! the same port, one of them the endpoint. The kernel programs must report
//! exactly the endpoint's connections, both families, and nothing of the
//! other address's, which are made first: the endpoint's events, read from
//! the same ring buffer after them, are the barrier.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
};

use common::{Daemon, Pair, add_addrs, of_kind, root_or_skip, serial};

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
