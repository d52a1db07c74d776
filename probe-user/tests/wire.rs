//! Wire-observer tests: the real daemon inside a client namespace with its
//! TC classifier on the client's veth, real TCP through a router namespace
//! that may act as an idle-resetting middlebox, and a real nginx serving
//! HTTP/2 in cleartext for GOAWAY.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Daemon, Pair, Routed, of_kind, root_or_skip, serial};
use serde_json::Value;
use socket2::{Socket, TcpKeepalive};

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

fn start_observer(t: &Routed) -> Daemon {
    Daemon::start_in(
        Some(&t.client),
        &["--iface", &t.client_dev, "--port", "6443"],
    )
}

fn wire(e: &Value) -> &Value {
    &e["wire"]
}

/// A server in the server namespace: for each connection, reads what comes
/// and answers "ok" to each message, until EOF, error or 15 s.
fn echo_server(t: &Routed, port: u16, conns: usize) -> std::thread::JoinHandle<()> {
    let at = addr(&t.server_ip, port);
    let listener = Pair::run_in(&t.server, move || TcpListener::bind(at).expect("bind"));
    std::thread::spawn(move || {
        let mut handles = Vec::new();
        for _ in 0..conns {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            handles.push(std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(b"ok").is_err() {
                        break;
                    }
                }
            }));
        }
        for h in handles {
            let _ = h.join();
        }
    })
}

#[test]
fn idle_flows_reset_by_a_middlebox_are_attributed_and_clustered() {
    let _g = serial();
    if !root_or_skip("idle_flows_reset_by_a_middlebox_are_attributed_and_clustered") {
        return;
    }
    let t = Routed::new();
    t.idle_reset_middlebox(3);
    let d = start_observer(&t);
    let server = addr(&t.server_ip, 6443);
    let srv = echo_server(&t, 6443, 3);
    // Three connections go quiet for 3.3 s (the middlebox forgets after 3 s),
    // then speak again: the router answers each with an RST.
    let results = t_client(&t, move || {
        let conns: Vec<TcpStream> = (0..3)
            .map(|i| {
                let mut c = TcpStream::connect(server).expect("connect");
                if i == 0 {
                    // Keepalive on, but slower than the middlebox: it cannot help.
                    Socket::from(c.try_clone().expect("clone"))
                        .set_tcp_keepalive(&TcpKeepalive::new().with_time(Duration::from_secs(60)))
                        .expect("keepalive");
                }
                c.write_all(b"hi").expect("write");
                let mut b = [0u8; 2];
                c.read_exact(&mut b).expect("ok");
                c
            })
            .collect();
        std::thread::sleep(Duration::from_millis(3300));
        conns
            .into_iter()
            .map(|mut c| {
                let _ = c.write_all(b"again");
                c.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut b = [0u8; 2];
                c.read(&mut b).map_err(|e| e.kind())
            })
            .collect::<Vec<_>>()
    });
    for r in &results {
        assert_eq!(*r, Err(std::io::ErrorKind::ConnectionReset), "{results:?}");
    }
    let evs = d.wait_for(&[&t.client_ip], "three wire resets", |e| {
        of_kind(e, "wire_reset").len() >= 3
    });
    let resets = of_kind(&evs, "wire_reset");
    assert_eq!(resets.len(), 3, "{evs:#?}");
    for r in &resets {
        let w = wire(r);
        assert_eq!(w["direction"], "received");
        assert_eq!(w["origin"], "middlebox", "{r}");
        assert_eq!(
            (w["ttl"].as_u64(), w["peer_ttl"].as_u64()),
            (Some(64), Some(63))
        );
        let silence = w["silence_seconds"].as_f64().expect("silence");
        assert!(
            (2.5..=3.8).contains(&silence),
            "idle about 3 s, got {silence}"
        );
        assert_eq!(w["keepalive"], "none");
        assert_eq!(r["remote"], format!("{}:6443", t.server_ip));
    }
    // The kernel's view agrees: an RST received in ESTABLISHED on each
    // socket, and the socket itself says how long it had been quiet and
    // what keepalive it had.
    let got = of_kind(&evs, "reset_received");
    assert_eq!(got.len(), 3);
    let mut keepalives: Vec<String> = Vec::new();
    for r in &got {
        assert_eq!(r["state"], "ESTABLISHED");
        let v = &r["socket"];
        let rx = v["idle_rx_seconds"].as_f64().expect("socket view");
        assert!(
            (3.0..4.0).contains(&rx),
            "last data received 3.3 s before: {rx}"
        );
        assert!(
            v["idle_tx_seconds"].as_f64().expect("tx") < 0.5,
            "we had just sent"
        );
        keepalives.push(v["keepalive"].as_str().expect("keepalive").to_string());
    }
    keepalives.sort();
    assert_eq!(keepalives, ["60s", "none", "none"]);
    // Three resets after the same silence: the inferred timeout is reported.
    let finding = d
        .events()
        .into_iter()
        .find(|e| e["finding"] == "idle_reset_cluster")
        .unwrap_or_else(|| panic!("no idle-reset finding: {:#?}", d.events()));
    let c = &finding["cluster"];
    assert_eq!(
        (c["resets"].as_u64(), c["origin"].as_str()),
        (Some(3), Some("middlebox"))
    );
    let inferred = c["timeout_s"].as_f64().expect("timeout");
    // The conntrack middlebox resets the first packet after the silence:
    // the resets answered the client's packets, so they bound the timeout
    // from above ("at most"), they do not measure it.
    assert_eq!(c["measured"], false, "answering resets only bound it");
    assert!(
        finding["summary"]
            .as_str()
            .is_some_and(|s| s.contains("at most")),
        "{finding:#?}"
    );
    assert!((2.7..=3.6).contains(&inferred), "inferred {inferred}");
    assert_eq!(c["without_keepalive"], 3);
    let m = d.metrics();
    assert_eq!(
        common::parse_metric(
            &m,
            "drainwatch_wire_resets_total{direction=\"received\",origin=\"middlebox\",port=\"6443\"}"
        ),
        3.0,
        "{m}"
    );
    assert!(
        m.contains("drainwatch_reset_idle_seconds_count{origin=\"middlebox\",port=\"6443\"} 3")
    );
    assert!(d.stop().success());
    drop(srv);
}

fn t_client<T: Send + 'static>(t: &Routed, f: impl FnOnce() -> T + Send + 'static) -> T {
    Pair::run_in(&t.client, f)
}

#[test]
fn a_peer_abort_is_attributed_to_the_peer() {
    let _g = serial();
    if !root_or_skip("a_peer_abort_is_attributed_to_the_peer") {
        return;
    }
    let t = Routed::new();
    let d = start_observer(&t);
    let server = addr(&t.server_ip, 6443);
    let listener = Pair::run_in(&t.server, move || TcpListener::bind(server).expect("bind"));
    let srv = std::thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        let mut s = s;
        let mut b = [0u8; 2];
        s.read_exact(&mut b).expect("hi");
        std::thread::sleep(Duration::from_millis(200));
        let sock = Socket::from(s);
        sock.set_linger(Some(Duration::ZERO)).expect("linger");
        drop(sock);
    });
    let got = t_client(&t, move || {
        let mut c = TcpStream::connect(server).expect("connect");
        c.write_all(b"hi").expect("write");
        let mut b = [0u8; 1];
        c.read(&mut b).map_err(|e| e.kind())
    });
    srv.join().expect("server");
    assert_eq!(got, Err(std::io::ErrorKind::ConnectionReset));
    let evs = d.wait_for(&[&t.client_ip], "wire reset", |e| {
        !of_kind(e, "wire_reset").is_empty()
    });
    let r = of_kind(&evs, "wire_reset");
    assert_eq!(r.len(), 1, "{evs:#?}");
    let w = wire(r[0]);
    assert_eq!(
        (
            w["origin"].as_str(),
            w["ttl"].as_u64(),
            w["peer_ttl"].as_u64()
        ),
        (Some("peer"), Some(63), Some(63))
    );
    let silence = w["silence_seconds"].as_f64().expect("silence");
    assert!(
        (0.15..1.0).contains(&silence),
        "the server waited 200 ms: {silence}"
    );
    assert!(w["flow_age_seconds"].as_f64().expect("age") >= 0.2);
    assert!(d.stop().success());
}

#[test]
fn keepalive_probes_are_seen_and_keep_the_middlebox_state() {
    let _g = serial();
    if !root_or_skip("keepalive_probes_are_seen_and_keep_the_middlebox_state") {
        return;
    }
    let t = Routed::new();
    t.idle_reset_middlebox(3);
    let d = start_observer(&t);
    let server = addr(&t.server_ip, 6443);
    let srv = echo_server(&t, 6443, 1);
    let reply = t_client(&t, move || {
        let c = TcpStream::connect(server).expect("connect");
        let sock = Socket::from(c);
        sock.set_tcp_keepalive(
            &TcpKeepalive::new()
                .with_time(Duration::from_secs(1))
                .with_interval(Duration::from_secs(1)),
        )
        .expect("keepalive");
        let mut c: TcpStream = sock.into();
        c.write_all(b"hi").expect("write");
        let mut b = [0u8; 2];
        c.read_exact(&mut b).expect("ok");
        // Longer than the middlebox's 3 s, but probes every second keep it.
        std::thread::sleep(Duration::from_millis(4500));
        c.write_all(b"again").expect("write");
        c.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut b = [0u8; 2];
        c.read_exact(&mut b).map(|_| b).map_err(|e| e.kind())
    });
    assert_eq!(reply, Ok(*b"ok"), "the connection survived");
    let evs = d.wait_for(&[&t.client_ip], "keepalives", |e| {
        of_kind(e, "keepalive").len() >= 3
    });
    assert!(of_kind(&evs, "wire_reset").is_empty(), "{evs:#?}");
    let probes: Vec<&Value> = of_kind(&evs, "keepalive")
        .into_iter()
        .filter(|e| wire(e)["direction"] == "sent")
        .collect();
    assert!(
        (3..=5).contains(&probes.len()),
        "about one probe a second: {probes:#?}"
    );
    for p in &probes[1..] {
        let i = wire(p)["keepalive_interval_seconds"]
            .as_f64()
            .expect("interval");
        assert!((0.8..1.6).contains(&i), "interval {i}");
    }
    assert!(d.stop().success());
    drop(srv);
}

/// A minimal HTTP/2 client frame.
fn h2_frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Reads frames until `want` returns true for one; returns them all.
fn read_frames(
    c: &mut TcpStream,
    deadline: Duration,
    want: impl Fn(u8, u8, u32) -> bool,
) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let end = Instant::now() + deadline;
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 4096];
    while Instant::now() < end {
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        match c.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let f: Vec<u8> = buf.drain(..9 + len).collect();
            let stream = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
            let done = want(f[3], f[4], stream);
            frames.push((f[3], f[4], stream, f[9..].to_vec()));
            if done {
                return frames;
            }
        }
    }
    frames
}

#[test]
fn nginx_graceful_stop_sends_goaway_and_it_is_decoded() {
    let _g = serial();
    if !root_or_skip("nginx_graceful_stop_sends_goaway_and_it_is_decoded") {
        return;
    }
    let t = Routed::new();
    let dir = std::env::temp_dir().join(format!("dwt-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
               server {{ listen {ip}:6443 http2; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            d = dir.display(),
            ip = t.server_ip
        ),
    )
    .expect("conf");
    let mut nginx = Command::new("ip")
        .args(["netns", "exec", &t.server, "nginx", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nginx (apt-get install nginx)");
    let d = start_observer(&t);
    let server = addr(&t.server_ip, 6443);
    let authority = format!("{}:6443", t.server_ip);
    let (client_saw, nginx_pid) = (
        {
            let authority = authority.clone();
            let pid = nginx.id() as i32;
            t_client(&t, move || {
                // nginx may take a moment to listen.
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut c = loop {
                    match TcpStream::connect(server) {
                        Ok(c) => break c,
                        Err(e) if Instant::now() < deadline => {
                            let _ = e;
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Err(e) => panic!("nginx never listened: {e}"),
                    }
                };
                let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
                out.extend(h2_frame(4, 0, 0, &[]));
                // HPACK: :method GET, :scheme http, :path /, :authority literal.
                let mut hdr = vec![0x82, 0x86, 0x84, 0x41, authority.len() as u8];
                hdr.extend_from_slice(authority.as_bytes());
                out.extend(h2_frame(1, 0x5, 1, &hdr));
                c.write_all(&out).expect("request");
                let frames = read_frames(&mut c, Duration::from_secs(5), |ty, fl, s| {
                    ty == 0 && s == 1 && fl & 1 != 0
                });
                assert!(
                    frames.iter().any(|f| f.0 == 0 && f.3 == b"ok\n"),
                    "response: {frames:?}"
                );
                c.write_all(&h2_frame(4, 1, 0, &[])).expect("settings ack");
                // Graceful stop, as `nginx -s quit` does.
                // SAFETY: signalling the nginx master we started.
                unsafe { libc::kill(pid, libc::SIGQUIT) };
                let frames = read_frames(&mut c, Duration::from_secs(10), |ty, _, _| ty == 7);
                frames.into_iter().find(|f| f.0 == 7).map(|f| {
                    (
                        u32::from_be_bytes([f.3[0], f.3[1], f.3[2], f.3[3]]) & 0x7fff_ffff,
                        u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]),
                    )
                })
            })
        },
        nginx.id(),
    );
    let _ = nginx.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let (last, code) = client_saw.unwrap_or_else(|| panic!("nginx {nginx_pid} sent no GOAWAY"));
    assert_eq!((last, code), (1, 0), "nginx: last stream 1, NO_ERROR");
    let evs = d.wait_for(&[&t.client_ip], "goaway", |e| {
        !of_kind(e, "goaway").is_empty()
    });
    let g = of_kind(&evs, "goaway");
    assert_eq!(g.len(), 1, "{evs:#?}");
    let w = wire(g[0]);
    assert_eq!(w["direction"], "received");
    assert_eq!(w["last_stream_id"], u64::from(last));
    assert_eq!(w["error_code"], "NO_ERROR");
    assert_eq!(g[0]["remote"], format!("{}:6443", t.server_ip));
    let m = d.metrics();
    assert!(
        m.contains("drainwatch_goaway_total{direction=\"received\",error_code=\"NO_ERROR\",port=\"6443\",source=\"wire\"} 1"),
        "{m}"
    );
    assert!(d.stop().success());
}

#[test]
fn apiserver_standin_goaways_on_sigterm_are_decoded() {
    let _g = serial();
    if !root_or_skip("apiserver_standin_goaways_on_sigterm_are_decoded") {
        return;
    }
    let t = Routed::new();
    let dir = std::env::temp_dir().join(format!("dwt-standin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let listen = format!("{}:6443", t.server_ip);
    let h2c = format!("{}:8080", t.server_ip);
    let mut standin = common::start_standin(
        &t.server,
        &dir,
        &[
            "--name",
            "m1",
            "--mode",
            "no-delay",
            "--listen",
            &listen,
            "--h2c-listen",
            &h2c,
            "--shutdown-delay",
            "0s",
            "--request-timeout",
            "3s",
            "--startup-delay",
            "100ms",
        ],
    );
    let d = Daemon::start_in(
        Some(&t.client),
        &["--iface", &t.client_dev, "--port", "8080"],
    );
    let server = addr(&t.server_ip, 8080);
    let pid = standin.id() as i32;
    let seen_by_client = t_client(&t, move || {
        let mut c = TcpStream::connect(server).expect("connect h2c");
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(h2_frame(4, 0, 0, &[]));
        // HPACK: :method GET, :scheme http, :path "/readyz" (literal, indexed name 4).
        let mut hdr = vec![0x82, 0x86, 0x04, 7];
        hdr.extend_from_slice(b"/readyz");
        out.extend(h2_frame(1, 0x5, 1, &hdr));
        c.write_all(&out).expect("request");
        let frames = read_frames(&mut c, Duration::from_secs(5), |ty, fl, s| {
            (ty == 0 || ty == 1) && s == 1 && fl & 1 != 0
        });
        assert!(
            frames.iter().any(|f| f.2 == 1),
            "a response on stream 1: {frames:?}"
        );
        c.write_all(&h2_frame(4, 1, 0, &[])).expect("settings ack");
        // SAFETY: signalling the stand-in we started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        // Everything until the server closes: one or two GOAWAYs (graceful
        // shutdown may announce 2^31-1 first, then the last stream).
        read_frames(&mut c, Duration::from_secs(8), |_, _, _| false)
            .into_iter()
            .filter(|f| f.0 == 7 && f.3.len() >= 8)
            .map(|f| {
                (
                    u64::from(u32::from_be_bytes([f.3[0], f.3[1], f.3[2], f.3[3]]) & 0x7fff_ffff),
                    u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]),
                )
            })
            .collect::<Vec<_>>()
    });
    let _ = standin.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!seen_by_client.is_empty(), "the stand-in sent no GOAWAY");
    let evs = d.wait_for(&[&t.client_ip], "goaways", |e| {
        of_kind(e, "goaway").len() >= seen_by_client.len()
    });
    let got: Vec<(u64, u32)> = of_kind(&evs, "goaway")
        .iter()
        .map(|g| {
            let w = wire(g);
            assert_eq!(w["direction"], "received");
            let code = match w["error_code"].as_str() {
                Some("NO_ERROR") => 0,
                other => panic!("unexpected error code {other:?}"),
            };
            (w["last_stream_id"].as_u64().expect("id"), code)
        })
        .collect();
    assert_eq!(
        got, seen_by_client,
        "the observer decodes exactly what the client received"
    );
    assert!(d.stop().success());
}

#[test]
fn closed_flows_leave_the_table_and_idle_open_ones_stay() {
    let _g = serial();
    if !root_or_skip("closed_flows_leave_the_table_and_idle_open_ones_stay") {
        return;
    }
    const CLOSED: usize = 20;
    let t = Routed::new();
    let d = start_observer(&t);
    let server = addr(&t.server_ip, 6443);
    let srv = echo_server(&t, 6443, CLOSED + 1);
    // One connection stays open and idle (the server times it out at 15 s):
    // an idle flow is what an idle timeout resets, it must stay.
    let idle = t_client(&t, move || {
        let mut c = TcpStream::connect(server).expect("connect");
        c.write_all(b"hi").expect("write");
        let mut b = [0u8; 2];
        c.read_exact(&mut b).expect("ok");
        c
    });
    // The others each exchange a message and close (FIN both ways).
    t_client(&t, move || {
        for _ in 0..CLOSED {
            let mut c = TcpStream::connect(server).expect("connect");
            c.write_all(b"hi").expect("write");
            let mut b = [0u8; 2];
            c.read_exact(&mut b).expect("ok");
            drop(c);
        }
    });
    // Closed flows go 5 s after their last packet, at the next 5-second walk.
    let deadline = std::time::Instant::now() + Duration::from_secs(14);
    let mut m = d.metrics();
    while common::parse_metric(&m, "drainwatch_flows_closed_removed_total") < CLOSED as f64
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(250));
        m = d.metrics();
    }
    assert_eq!(
        common::parse_metric(&m, "drainwatch_flows_closed_removed_total"),
        CLOSED as f64,
        "{m}"
    );
    assert_eq!(
        common::parse_metric(&m, "drainwatch_flow_table_entries"),
        1.0,
        "{m}"
    );
    assert_eq!(
        common::parse_metric(&m, "drainwatch_flow_evictions_total"),
        0.0,
        "{m}"
    );
    // The table's occupancy series comes from the same walk.
    assert_eq!(
        common::parse_metric(&m, "drainwatch_map_entries{map=\"flows\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        common::parse_metric(&m, "drainwatch_map_capacity{map=\"flows\"}"),
        f64::from(probe_common::DEFAULT_FLOW_TABLE),
        "{m}"
    );
    drop(idle);
    assert!(d.stop().success());
    srv.join().expect("server");
}
