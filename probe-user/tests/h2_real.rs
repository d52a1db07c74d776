//! HTTP/2 GOAWAY from real servers whose frames cross TCP segments: a
//! 1 MiB download from nghttpd (prior knowledge) ended by its
//! GOAWAY(PROTOCOL_ERROR), nghttp's own GOAWAY after a 1 MiB download, and
//! Apache's GOAWAY over an h2c upgrade (`nghttp -u`, and curl's upgrade).
//! Each time the kernel classifier (on the client's veth), real tcpdump's
//! capture of that veth through `drainwatch analyze --pcap`, and the client
//! itself must report exactly the same GOAWAYs.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{Daemon, Pair, Routed, of_kind, root_or_skip, serial};
use serde_json::Value;

/// The size of the file the downloads fetch.
const FILE_BYTES: usize = 1 << 20;
/// curl 7.88 fails an h2c upgrade when more than 32 KiB follow the 101 in
/// one read ("connection buffer size is too small to store data following
/// HTTP Upgrade response header"): it fetches a smaller file.
const SMALL_BYTES: usize = 16 << 10;

/// A GOAWAY as (the server sent it, last-stream-id, error code name).
type Goaway = (bool, u64, String);

/// A scratch directory removed on drop, with the 1 MiB file in `www/`.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("dwt-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("www")).expect("dir");
        // Not compressible, not periodic: nothing shortens the transfer.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let body: Vec<u8> = (0..FILE_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(d.join("www/small"), &body[..SMALL_BYTES]).expect("file");
        std::fs::write(d.join("www/file"), body).expect("file");
        // Apache's workers run as nobody.
        for p in [d.clone(), d.join("www")] {
            sh_ok(&["chmod", "755", p.to_str().expect("utf8")]);
        }
        for f in ["www/file", "www/small"] {
            sh_ok(&["chmod", "644", d.join(f).to_str().expect("utf8")]);
        }
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sh_ok(args: &[&str]) {
    common::sh(args);
}

/// A child process stopped (and reaped) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(common::POLL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Real tcpdump writing a capture file in a namespace.
struct Capture {
    child: Child,
    file: PathBuf,
    /// tcpdump's stderr lines: the closing statistics.
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Capture {
    fn start(ns: &str, dev: &str, file: &Path) -> Capture {
        let mut child = Command::new("ip")
            // Each packet written as it arrives (--immediate-mode: not when a
            // ring block retires, which SIGINT may not wait for; -U: no
            // output buffering).
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "-n",
                "--immediate-mode",
                "-U",
            ])
            // A 1 MiB burst overflows the default 2 MiB capture buffer.
            .args(["-s", "0", "-B", "65536", "-i", dev])
            .arg("-w")
            .arg(file)
            .arg("tcp port 6443")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (apt-get install tcpdump)");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let l = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let listening = line.contains("listening on");
                l.lock().expect("lines").push(line);
                if listening {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("tcpdump did not start");
        Capture {
            child,
            file: file.to_path_buf(),
            stderr: lines,
            reader: Some(reader),
        }
    }

    /// Stops the capture (tcpdump flushes and closes the file on SIGINT);
    /// a capture that lost packets cannot be compared, so that fails here.
    fn finish(mut self) -> PathBuf {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let lines = self.stderr.lock().expect("lines").clone();
        assert!(
            lines
                .iter()
                .any(|l| l.trim() == "0 packets dropped by kernel"),
            "tcpdump lost packets: {lines:?}"
        );
        self.file.clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The GOAWAYs and uninspected counts `drainwatch analyze --pcap` finds.
fn pcap_goaways(file: &Path) -> (Vec<Goaway>, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_drainwatch"))
        .args(["analyze", "--pcap"])
        .arg(file)
        .args(["--port", "6443", "--output", "json"])
        .output()
        .expect("analyze --pcap");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "analyze --pcap gave no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    fn walk(v: &Value, out: &mut Vec<Goaway>) {
        match v {
            Value::Object(m) => {
                if m.get("type").and_then(Value::as_str) == Some("goaway") {
                    out.push((
                        m["direction"] == "sent",
                        m["last_stream_id"].as_u64().expect("id"),
                        m["error_code"].as_str().expect("code").to_string(),
                    ));
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut g = Vec::new();
    walk(&v["observations"], &mut g);
    (g, v["capture"]["flows"]["uninspected"].clone())
}

/// The kernel's GOAWAY events, seen from the client: "received" ones were
/// sent by the server.
fn kernel_goaways(evs: &[Value]) -> Vec<Goaway> {
    of_kind(evs, "goaway")
        .iter()
        .map(|e| {
            let w = &e["wire"];
            (
                w["direction"] == "received",
                w["last_stream_id"].as_u64().expect("id"),
                w["error_code"].as_str().expect("code").to_string(),
            )
        })
        .collect()
}

fn observer(t: &Routed) -> Daemon {
    Daemon::start_in(
        Some(&t.client),
        &["--iface", &t.client_dev, "--port", "6443"],
    )
}

/// Connects from the client namespace once the server listens.
fn connect(t: &Routed, server: SocketAddr) -> TcpStream {
    Pair::run_in(&t.client, move || {
        common::wait_for(Duration::from_secs(10), "the server to listen", || {
            TcpStream::connect(server).map_err(|e| e.to_string())
        })
    })
}

fn h2_frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Reads frames (type, flags, stream, payload) until `done` says so, EOF or 15 s.
fn read_frames(
    c: &mut TcpStream,
    mut done: impl FnMut(&(u8, u8, u32, Vec<u8>)) -> bool,
) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let end = Instant::now() + Duration::from_secs(15);
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let (mut buf, mut frames, mut chunk) = (Vec::new(), Vec::new(), vec![0u8; 65536]);
    while Instant::now() < end {
        match c.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let f: Vec<u8> = buf.drain(..9 + len).collect();
            let fr = (
                f[3],
                f[4],
                u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff,
                f[9..].to_vec(),
            );
            let stop = done(&fr);
            frames.push(fr);
            if stop {
                return frames;
            }
        }
    }
    frames
}

fn error_name(code: u32) -> String {
    drainwatch_ops::pcap::flows::h2_error_name(code)
}

/// GOAWAY lines of `nghttp -v`: `send`/`recv GOAWAY frame` followed by
/// `(last_stream_id=N, error_code=NAME(0x..)`.
fn nghttp_goaways(out: &str) -> Vec<Goaway> {
    let lines: Vec<&str> = out.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(" GOAWAY frame "))
        .map(|(i, l)| {
            let d = lines.get(i + 1).copied().unwrap_or_default();
            let last = d
                .split("last_stream_id=")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("nghttp GOAWAY line {d:?}"));
            let code = d
                .split("error_code=")
                .nth(1)
                .and_then(|s| s.split('(').next())
                .unwrap_or_else(|| panic!("nghttp GOAWAY line {d:?}"));
            (l.contains("] recv "), last, code.to_string())
        })
        .collect()
}

/// The uninspected reasons that would mean frames were lost track of.
fn assert_followed(pcap_uninspected: &Value, d: &Daemon) {
    for reason in ["h2_split_header", "h2_seq_gap", "h2_frame_limit", "not_h2"] {
        assert!(
            pcap_uninspected.get(reason).is_none(),
            "pcap: {reason}: {pcap_uninspected}"
        );
    }
    let m = d.metrics();
    for reason in [
        "split_header",
        "seq_gap",
        "frame_limit",
        "not_http2",
        "h2c_upgrade_lost",
    ] {
        assert_eq!(
            common::parse_metric(
                &m,
                &format!("drainwatch_wire_uninspected_total{{reason=\"{reason}\"}}")
            ),
            0.0,
            "kernel: {reason}\n{m}"
        );
    }
}

#[test]
fn nghttpd_goaway_after_a_1mib_download_kernel_pcap_and_client_agree() {
    let _g = serial();
    if !root_or_skip("nghttpd_goaway_after_a_1mib_download_kernel_pcap_and_client_agree") {
        return;
    }
    let t = Routed::new();
    let dir = Scratch::new("nghttpd");
    let _nghttpd = Proc(
        Command::new("ip")
            .args(["netns", "exec", &t.server, "nghttpd", "--no-tls", "-a"])
            .arg(&t.server_ip)
            .arg("-d")
            .arg(dir.0.join("www"))
            .arg("6443")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nghttpd (apt-get install nghttp2-server)"),
    );
    let d = observer(&t);
    let cap = Capture::start(&t.client, &t.client_dev, &dir.0.join("c.pcap"));
    let server: SocketAddr = format!("{}:6443", t.server_ip).parse().expect("addr");
    let authority = server.to_string();

    // 1. Our own client: a window big enough for the whole file, GET,
    // the file in full, then a WINDOW_UPDATE of 0 on the connection, which
    // RFC 9113 6.9 makes a connection error: nghttpd answers with
    // GOAWAY(last stream 1, PROTOCOL_ERROR) right after the DATA frames.
    let mut c = connect(&t, server);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE 2^31-1.
    out.extend(h2_frame(4, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]));
    out.extend(h2_frame(8, 0, 0, &(0x7fff_ffffu32 - 65535).to_be_bytes()));
    // HPACK: :method GET, :scheme http, :path "/file", :authority.
    let mut hdr = vec![0x82, 0x86, 0x04, 5];
    hdr.extend_from_slice(b"/file");
    hdr.extend([0x41, authority.len() as u8]);
    hdr.extend_from_slice(authority.as_bytes());
    out.extend(h2_frame(1, 0x5, 1, &hdr));
    c.write_all(&out).expect("request");
    let frames = read_frames(&mut c, |f| f.0 == 0 && f.2 == 1 && f.1 & 1 != 0);
    let body: usize = frames
        .iter()
        .filter(|f| f.0 == 0 && f.2 == 1)
        .map(|f| f.3.len())
        .sum();
    assert_eq!(body, FILE_BYTES, "the whole file came");
    // Let the server see our SETTINGS acknowledged, then break the rules.
    c.write_all(&h2_frame(4, 1, 0, &[])).expect("settings ack");
    c.write_all(&h2_frame(8, 0, 0, &[0, 0, 0, 0]))
        .expect("window update 0");
    let got = read_frames(&mut c, |f| f.0 == 7);
    let mut client: Vec<Goaway> = got
        .iter()
        .filter(|f| f.0 == 7)
        .map(|f| {
            let p = &f.3;
            (
                true,
                u64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff),
                error_name(u32::from_be_bytes([p[4], p[5], p[6], p[7]])),
            )
        })
        .collect();
    assert_eq!(client, [(true, 1, "PROTOCOL_ERROR".to_string())]);
    drop(c);

    // 2. nghttp, a real client: the same download; it ends with its own
    // GOAWAY(0, NO_ERROR).
    let url = format!("http://{authority}/file");
    let o = Command::new("ip")
        .args(["netns", "exec", &t.client, "nghttp", "-v", "-n", &url])
        .output()
        .expect("nghttp (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "nghttp: {text}");
    let data: usize = text
        .lines()
        .filter(|l| l.contains("recv DATA frame"))
        .filter_map(|l| {
            l.split("length=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert_eq!(data, FILE_BYTES, "nghttp got the whole file");
    client.extend(nghttp_goaways(&text));
    assert_eq!(client.len(), 2, "{text}");

    let evs = d.wait_for(&[&t.client_ip], "goaways", |e| {
        of_kind(e, "goaway").len() >= client.len()
    });
    let kernel = kernel_goaways(&evs);
    let (pcap, uninspected) = pcap_goaways(&cap.finish());
    eprintln!(
        "GOAWAYs (server sent, last stream, code): client {client:?}, kernel {kernel:?}, pcap {pcap:?}"
    );
    assert_eq!(kernel, client, "kernel == client");
    assert_eq!(pcap, client, "pcap == client");
    assert_followed(&uninspected, &d);
    assert!(d.stop().success());
}

#[test]
fn apache_goaway_over_h2c_upgrade_kernel_pcap_and_client_agree() {
    let _g = serial();
    if !root_or_skip("apache_goaway_over_h2c_upgrade_kernel_pcap_and_client_agree") {
        return;
    }
    let t = Routed::new();
    let dir = Scratch::new("apache");
    let conf = dir.0.join("httpd.conf");
    std::fs::write(
        &conf,
        format!(
            "ServerRoot {d}\nPidFile {d}/httpd.pid\nErrorLog {d}/error.log\n\
             LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so\n\
             LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so\n\
             LoadModule http2_module /usr/lib/apache2/modules/mod_http2.so\n\
             User nobody\nGroup nogroup\nListen {ip}:6443\nServerName dwt\n\
             DocumentRoot {d}/www\nProtocols h2c http/1.1\nH2Upgrade on\n\
             <Directory {d}/www>\n  Require all granted\n</Directory>\n",
            d = dir.0.display(),
            ip = t.server_ip
        ),
    )
    .expect("conf");
    let _apache = Proc(
        Command::new("ip")
            .args(["netns", "exec", &t.server, "/usr/sbin/apache2", "-f"])
            .arg(&conf)
            .arg("-DFOREGROUND")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("apache2 (apt-get install apache2-bin)"),
    );
    let d = observer(&t);
    let cap = Capture::start(&t.client, &t.client_dev, &dir.0.join("c.pcap"));
    let server: SocketAddr = format!("{}:6443", t.server_ip).parse().expect("addr");
    drop(connect(&t, server));
    let url = format!("http://{server}/file");

    // nghttp -u: HTTP/1.1 with Upgrade: h2c, 101, then HTTP/2 both ways;
    // Apache ends that connection with a GOAWAY.
    let o = Command::new("ip")
        .args(["netns", "exec", &t.client, "nghttp", "-u", "-v", "-n", &url])
        .output()
        .expect("nghttp (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("HTTP Upgrade success"),
        "nghttp upgraded: {text}"
    );
    let client = nghttp_goaways(&text);
    assert!(!client.is_empty(), "Apache sent no GOAWAY: {text}");

    // curl --http2 upgrades too.
    let o = Command::new("ip")
        .args(["netns", "exec", &t.client, "curl", "-s", "--http2"])
        .args([
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{size_download}",
            "-v",
        ])
        .arg(format!("http://{server}/small"))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("2 {SMALL_BYTES}"),
        "curl upgraded to HTTP/2 and got the file: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    let evs = d.wait_for(&[&t.client_ip], "goaways", |e| {
        of_kind(e, "goaway").len() >= client.len()
    });
    let kernel = kernel_goaways(&evs);
    let (pcap, uninspected) = pcap_goaways(&cap.finish());
    // curl's connection ends without a GOAWAY either way or with the same
    // one in both: what the kernel and the capture saw must match, and
    // nghttp's connection comes first.
    eprintln!(
        "GOAWAYs (server sent, last stream, code): nghttp {client:?}, kernel {kernel:?}, pcap {pcap:?}"
    );
    assert_eq!(
        kernel, pcap,
        "kernel == pcap; pcap uninspected: {uninspected}"
    );
    assert_eq!(kernel[..client.len()], client[..], "kernel == nghttp");
    assert_followed(&uninspected, &d);
    assert!(d.stop().success());
}
