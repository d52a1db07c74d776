//! `drainwatch run --netns PATH` started from the host namespace: the
//! chosen namespace's traffic crosses only its own interfaces, so the TC
//! classifier must attach there (it used to attach to the host's, report no
//! wire events, and still say `drainwatch_source_up{source="wire"} 1`).
//! Namespaces are the test's own, the traffic real TCP, every step ordered
//! on the event it waits for.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use common::{Daemon, Pair, of_kind, root_or_skip, serial};
use socket2::Socket;

const PORT: u16 = 6443;

fn netns_path(ns: &str) -> String {
    format!("/run/netns/{ns}")
}

#[test]
fn the_classifier_attaches_in_the_chosen_namespace() {
    let _g = serial();
    if !root_or_skip("the_classifier_attaches_in_the_chosen_namespace") {
        return;
    }
    let pair = Pair::new();
    let path = netns_path(&pair.server);
    // From the host namespace, as a node agent would be started.
    let d = Daemon::start(&["--netns", &path, "--port", &PORT.to_string()]);
    let hook = format!(
        "drainwatch_hook_attached{{hook=\"tc ingress {} (netns {path})\"}}",
        pair.server_dev
    );
    assert_eq!(d.metric(&hook), 1.0, "{}", d.metrics());
    assert_eq!(
        d.metric("drainwatch_source_up{source=\"wire\"}"),
        1.0,
        "{}",
        d.metrics()
    );

    let server: SocketAddr = format!("{}:{PORT}", pair.server_v4).parse().expect("addr");
    let listener = Pair::run_in(&pair.server, move || {
        TcpListener::bind(server).expect("bind")
    });
    let srv = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut b = [0u8; 2];
        s.read_exact(&mut b).expect("hi");
        s.write_all(b"ok").expect("ok");
        // Until the client's RST.
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        s.read(&mut b).map_err(|e| e.kind())
    });
    let client_port = pair.in_client(move || {
        let mut c = TcpStream::connect(server).expect("connect");
        c.write_all(b"hi").expect("write");
        let mut b = [0u8; 2];
        c.read_exact(&mut b).expect("ok");
        let port = c.local_addr().expect("local").port();
        // An abortive close: the RST crosses the server's veth.
        let sock = Socket::from(c);
        sock.set_linger(Some(Duration::ZERO)).expect("linger");
        drop(sock);
        port
    });
    assert_eq!(
        srv.join().expect("server"),
        Err(std::io::ErrorKind::ConnectionReset)
    );

    let client = pair.client_v4.clone();
    let evs = d.wait_for(&[&client], "the RST seen on the server's veth", |e| {
        !of_kind(e, "wire_reset").is_empty()
    });
    let resets = of_kind(&evs, "wire_reset");
    assert_eq!(resets.len(), 1, "{evs:#?}");
    let r = resets[0];
    assert_eq!(r["local"], server.to_string(), "{r}");
    assert_eq!(r["remote"], format!("{client}:{client_port}"), "{r}");
    let w = &r["wire"];
    assert_eq!(
        (w["direction"].as_str(), w["origin"].as_str()),
        (Some("received"), Some("peer")),
        "{r}"
    );
    // The kernel side of the same namespace agrees: the server's socket got it.
    let got = of_kind(&evs, "reset_received");
    assert_eq!(got.len(), 1, "{evs:#?}");
    assert_eq!(got[0]["remote"], r["remote"]);
    assert!(d.stop().success());
}

#[test]
fn check_says_where_the_classifier_attaches_and_netlink_is_refused_there() {
    let _g = serial();
    if !root_or_skip("check_says_where_the_classifier_attaches_and_netlink_is_refused_there") {
        return;
    }
    let pair = Pair::new();
    let path = netns_path(&pair.server);
    let check = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_drainwatch"))
            .args(["run", "--check", "--netns", &path])
            .args(extra)
            .output()
            .expect("drainwatch run --check");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let text = check(&[]);
    assert!(
        text.contains(&format!(
            "wire        TC classifier on {}, lo in network namespace {path}",
            pair.server_dev
        )) || text.contains(&format!(
            "wire        TC classifier on lo, {} in network namespace {path}",
            pair.server_dev
        )),
        "{text}"
    );
    for dir in ["ingress", "egress"] {
        assert!(
            text.contains(&format!(
                "  used         tc {dir} {} (netns {path})",
                pair.server_dev
            )),
            "{text}"
        );
    }
    // A netlink filter there could outlive drainwatch: refused, said so.
    let text = check(&["--tc-attach", "netlink"]);
    assert!(
        text.contains(&format!(
            "  unavailable  tc ingress {} (netns {path})",
            pair.server_dev
        )) && text.contains("only TCX links"),
        "{text}"
    );
    assert!(!text.contains("  used         tc "), "{text}");
}
