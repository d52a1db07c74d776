//! `analyze --pcap` on a capture real tcpdump wrote: in a network namespace
//! this test creates (addresses from 198.18.0.0/15 on its `lo`), a refused
//! connect and an SO_LINGER 0 abort by the server, then the decoded
//! observations must be exactly those two stories.
//!
//! Needs root, `ip` and `tcpdump`; without them it prints why and passes
//! (CI runs as root, so it runs there). The traffic is made by this same
//! test binary re-executed inside the namespace (`ip netns exec`), so no
//! namespace syscalls are needed here.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drainwatch_correlate::Obs;
use drainwatch_ops::pcap::decode_file;
use drainwatch_ops::pcap::flows::FlowOptions;

const HELPER_ENV: &str = "DW_PCAP_NETNS_HELPER";
const CLIENT: &str = "198.18.0.1";
const SERVER: &str = "198.18.0.2";
const PORT: u16 = 16443;

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(st.success(), "{args:?} failed: {st}");
}

/// Deletes the namespace and stops tcpdump even when the test fails.
struct Netns {
    name: String,
    tcpdump: Option<Child>,
    dir: PathBuf,
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(mut c) = self.tcpdump.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn bound_client(port: u16) -> socket2::Socket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("client socket");
    let addr: SocketAddr = format!("{CLIENT}:{port}").parse().expect("client address");
    s.bind(&addr.into()).expect("bind the client address");
    s
}

/// Runs inside the namespace: a refused connect from CLIENT:41001, then a
/// connection from CLIENT:41002 that the server aborts with SO_LINGER 0
/// after reading the request.
#[test]
fn netns_traffic_helper() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let server: SocketAddr = format!("{SERVER}:{PORT}").parse().unwrap();
    let refused = bound_client(41001);
    let e = refused.connect(&server.into()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    drop(refused);
    std::thread::sleep(Duration::from_millis(50));

    let listener = TcpListener::bind(server).unwrap();
    let c = bound_client(41002);
    c.connect(&server.into()).unwrap();
    let mut client: std::net::TcpStream = c.into();
    let (conn, _) = listener.accept().unwrap();
    client.write_all(b"GET /readyz HTTP/1.1\r\n\r\n").unwrap();
    let conn = socket2::Socket::from(conn);
    let mut buf = [std::mem::MaybeUninit::new(0u8); 64];
    let n = conn.recv(&mut buf).unwrap();
    assert!(n > 0);
    std::thread::sleep(Duration::from_millis(50));
    // SO_LINGER 0: close sends an RST instead of a FIN.
    conn.set_linger(Some(Duration::ZERO)).unwrap();
    drop(conn);
    let mut rest = Vec::new();
    let r = client.read_to_end(&mut rest);
    assert!(r.is_err(), "client should see a reset, got {r:?}");
}

fn wait_listening(child: &mut Child) -> Result<(), String> {
    // tcpdump says "listening on lo" on stderr once the capture is armed.
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr).lines();
        while let Some(Ok(l)) = lines.next() {
            if l.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| "tcpdump did not start listening within 10 s".to_string())
}

#[test]
fn real_tcpdump_capture_gives_exact_observations() {
    if std::env::var_os(HELPER_ENV).is_some() {
        return;
    }
    if !is_root() || !have("ip") || !have("tcpdump") {
        assert!(
            std::env::var_os("DRAINWATCH_NO_SKIP").is_none(),
            "needs root, ip and tcpdump: DRAINWATCH_NO_SKIP is set, nothing may skip"
        );
        println!(
            "SKIPPED real_tcpdump_capture_gives_exact_observations: needs root, ip and tcpdump \
             (root={}, ip={}, tcpdump={})",
            is_root(),
            have("ip"),
            have("tcpdump")
        );
        return;
    }
    let started = Instant::now();
    let name = format!("dwpcap-{}", std::process::id());
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut ns = Netns {
        name: name.clone(),
        tcpdump: None,
        dir: dir.clone(),
    };
    sh(&["ip", "netns", "add", &name]);
    sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
    sh(&[
        "ip",
        "-n",
        &name,
        "addr",
        "add",
        &format!("{CLIENT}/32"),
        "dev",
        "lo",
    ]);
    sh(&[
        "ip",
        "-n",
        &name,
        "addr",
        "add",
        &format!("{SERVER}/32"),
        "dev",
        "lo",
    ]);

    let file = dir.join("cap.pcap");
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &name,
            "tcpdump",
            "-i",
            "lo",
            "-n",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-s",
            "256",
            "-w",
        ])
        .arg(&file)
        .args(["tcp", "port", &PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tcpdump");
    let ready = wait_listening(&mut child);
    ns.tcpdump = Some(child);
    ready.unwrap();

    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &name])
        .arg(&exe)
        .args([
            "--exact",
            "netns_traffic_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        .output()
        .expect("run helper");
    assert!(
        out.status.success(),
        "helper failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // tcpdump writes a packet a moment after it crossed `lo` (-U flushes each
    // one): wait until the file holds the last one, the server's RST to
    // CLIENT:41002 (the file is in order, so everything before it is there
    // too), then stop tcpdump cleanly (SIGTERM flushes and closes the file;
    // SIGKILL could truncate it). Without --immediate-mode, libpcap's
    // TPACKET_V3 ring hands packets over only when a block retires (1 s by
    // default), and tcpdump stopped before that writes nothing.
    let opts = FlowOptions {
        ports: vec![PORT],
        locals: vec![],
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A read racing a write may end mid-record: that is "not yet".
        let seen = decode_file(Path::new(&file), &opts)
            .map(|d| {
                d.observations
                    .iter()
                    .any(|o| matches!(o.kind, Obs::ResetSent { .. }))
            })
            .unwrap_or(false);
        if seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tcpdump did not write the server's RST to {} within 10 s",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(mut c) = ns.tcpdump.take() {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    let d = decode_file(
        Path::new(&file),
        &FlowOptions {
            ports: vec![PORT],
            locals: vec![],
        },
    )
    .expect("decode the real capture");
    let client1: SocketAddr = format!("{CLIENT}:41001").parse().unwrap();
    let client2: SocketAddr = format!("{CLIENT}:41002").parse().unwrap();
    let server: SocketAddr = format!("{SERVER}:{PORT}").parse().unwrap();
    let kinds: Vec<&Obs> = d.observations.iter().map(|o| &o.kind).collect();
    assert_eq!(
        kinds,
        vec![
            &Obs::Refused {
                client: client1,
                server,
                path: None
            },
            &Obs::Accepted {
                client: client2,
                server,
                path: None
            },
            &Obs::ResetSent {
                client: client2,
                server,
                reason: Some("TCP_ABORT_ON_CLOSE".into()),
                state: Some("ESTABLISHED".into())
            },
        ],
        "decoded: {d:#?}"
    );
    // On lo every packet is seen once, by the Ethernet link type.
    assert_eq!(d.link_types.keys().collect::<Vec<_>>(), vec!["ETHERNET"]);
    assert_eq!(d.flows.refused, 1);
    assert_eq!(d.flows.handshakes, 1);
    println!("real tcpdump test took {:?}", started.elapsed());
}
