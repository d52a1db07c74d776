//! The connection tracepoints' socket table (`SOCKS`) at its capacity: the
//! real programs and daemon, real TCP between namespaces this test creates.
//! A full table refuses new sockets and counts each one exactly once; it
//! never evicts a tracked one. Root is required; without it the test says
//! why it skips.

mod common;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use common::{Daemon, Pair, root_or_skip, serial};

#[test]
fn a_full_socket_table_counts_each_socket_it_refuses_once() {
    let _g = serial();
    if !root_or_skip("a_full_socket_table_counts_each_socket_it_refuses_once") {
        return;
    }
    // An unusual port, so nothing else on the host takes table entries.
    let port = 7446;
    let pair = Pair::new();
    let d = Daemon::start(&["--port", &port.to_string(), "--socket-table", "16"]);
    let to = SocketAddr::new(pair.server_v4.parse().expect("ip"), port);
    let listener = pair.in_server(move || TcpListener::bind(to).expect("bind"));
    // 20 connections held open: 40 watched sockets (both ends), each
    // inserted once at its handshake's start (SYN_SENT, SYN_RECV); 16 fit,
    // 24 are refused, and refused again (uncounted) at ESTABLISHED.
    let clients: Vec<TcpStream> = pair.in_client(move || {
        (0..20)
            .map(|_| TcpStream::connect(to).expect("connect"))
            .collect()
    });
    let servers: Vec<TcpStream> = (0..20)
        .map(|_| listener.accept().expect("accept").0)
        .collect();
    let full = "drainwatch_socket_table_full_total";
    common::wait_for(
        Duration::from_secs(10),
        "the refusals counted (the daemon polls every 250 ms)",
        || {
            let m = d.metrics();
            if common::parse_metric(&m, full) >= 24.0 {
                Ok(())
            } else {
                Err(m)
            }
        },
    );
    // The tables are counted every 15 s: wait for a count of the full one.
    let socks = "drainwatch_map_entries{map=\"socks\"}";
    common::wait_for(
        Duration::from_secs(40),
        "a count of the full socket table",
        || {
            let m = d.metrics();
            if common::parse_metric(&m, socks) == 16.0 {
                Ok(())
            } else {
                Err(m)
            }
        },
    );
    let m = d.metrics();
    assert_eq!(common::parse_metric(&m, full), 24.0, "{m}");
    assert_eq!(
        common::parse_metric(&m, "drainwatch_socket_table_size"),
        16.0
    );
    assert_eq!(
        common::parse_metric(&m, "drainwatch_map_capacity{map=\"socks\"}"),
        16.0
    );
    drop((clients, servers, listener));
    assert!(d.stop().success());
}
