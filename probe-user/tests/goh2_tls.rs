//! HTTP/2 GOAWAY and refused streams inside TLS, from uprobes in Go's own
//! HTTP/2 code, against ground truth from outside drainwatch: the test
//! program (`lab/go/h2probe`) writes a TLS key log, tcpdump captures the
//! traffic, and tshark decrypts it and lists every GOAWAY and RST_STREAM
//! frame. For each of Debian's Go 1.19, 1.22 and 1.24, each build (unstripped,
//! stripped as Kubernetes releases are, stripped PIE) and both copies of
//! Go's HTTP/2 (golang.org/x/net/http2 and the one bundled in net/http), the
//! frames drainwatch reports as sent equal tshark's, frame by frame, with the
//! right 4-tuple, ids, codes and process; frames reported as received are
//! among tshark's, and every GOAWAY to the holding client (which runs until
//! each of its connections has ended, so its read loops read every frame)
//! is reported as received by it.
//!
//! Fixtures come from `cargo xtask go-fixtures` (`cargo xtask test` builds
//! them and says where in `DRAINWATCH_GO_FIXTURES`).

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use common::{Daemon, free_port, root_or_skip, serial, wait_for};
use serde_json::Value;

struct Fixture {
    go: String,
    variant: String,
    path: PathBuf,
}

fn fixtures() -> Vec<Fixture> {
    let dir = std::env::var_os("DRAINWATCH_GO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/go/fixtures"));
    let manifest = dir.join("manifest.tsv");
    let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build the Go test programs first with `cargo xtask go-fixtures` (cargo xtask test does)",
            manifest.display()
        )
    });
    let all: Vec<Fixture> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 3, "bad manifest line {l:?}");
            Fixture {
                go: f[0].into(),
                variant: f[1].into(),
                path: f[2].into(),
            }
        })
        .collect();
    assert_eq!(all.len(), 9, "three Go releases x three builds");
    all
}

/// A fixture process whose stdout lines the test waits on.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    name: String,
}

impl Proc {
    fn spawn(bin: &Path, args: &[&str], name: &str) -> Proc {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().expect("lines").push(line);
            }
        });
        Proc {
            stdin: child.stdin.take(),
            child,
            lines,
            name: name.into(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_line(&self, prefix: &str) -> String {
        wait_for(
            Duration::from_secs(20),
            &format!("{} to print {prefix:?}", self.name),
            || {
                let lines = self.lines.lock().expect("lines");
                lines
                    .iter()
                    .find(|l| l.starts_with(prefix))
                    .cloned()
                    .ok_or_else(|| format!("{lines:?}"))
            },
        )
    }

    fn lines_with(&self, prefix: &str) -> Vec<String> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The local ports of the client's connections ("conn ADDR" lines).
    fn conn_ports(&self) -> Vec<u16> {
        self.lines_with("conn ")
            .iter()
            .map(|l| {
                l.rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("{l:?}"))
            })
            .collect()
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to fixture");
        stdin.flush().expect("flush");
    }

    fn wait_exit(&mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "{} exited with {status}", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tcpdump writing a capture file.
struct Capture {
    child: Child,
    file: PathBuf,
    /// tcpdump's stderr (its closing statistics).
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Capture {
    fn start(file: PathBuf, port: u16) -> Capture {
        let mut child = Command::new("tcpdump")
            // Packets as they arrive (not when a ring block retires), each
            // written at once; the file stays root's (no privilege drop).
            .args([
                "-i",
                "lo",
                "--immediate-mode",
                // A large buffer: on a busy machine tcpdump can fall behind,
                // and a dropped packet would make tshark's truth incomplete.
                "-B",
                "65536",
                "-U",
                "-n",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&file)
            .arg(format!("tcp port {port}"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
                lines.lock().expect("lines").push(line);
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("tcpdump did not start");
        Capture {
            child,
            file,
            stderr,
        }
    }

    /// Stops the capture once it holds everything sent so far: a SYN from
    /// a port of our own choosing to `port` goes last, and the capture ends
    /// when tshark finds it in the file (packets are captured in order).
    fn finish(mut self, port: u16) -> PathBuf {
        let marker = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        marker
            .bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .expect("addr")
                    .into(),
            )
            .expect("bind");
        let from = marker
            .local_addr()
            .expect("local")
            .as_socket()
            .expect("inet")
            .port();
        // Refused: nothing listens any more. Only the SYN matters.
        let _ = marker.connect(
            &format!("127.0.0.1:{port}")
                .parse::<std::net::SocketAddr>()
                .expect("addr")
                .into(),
        );
        wait_for(
            Duration::from_secs(10),
            "the capture to hold the last packet",
            || {
                let out = Command::new("tshark")
                    .arg("-r")
                    .arg(&self.file)
                    .args([
                        "-Y",
                        &format!("tcp.srcport == {from}"),
                        "-T",
                        "fields",
                        "-e",
                        "frame.number",
                    ])
                    .output()
                    .map_err(|e| e.to_string())?;
                if String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                    Err("not yet".into())
                } else {
                    Ok(())
                }
            },
        );
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        // Ground truth only if tcpdump lost nothing.
        let stats = wait_for(Duration::from_secs(5), "tcpdump's statistics", || {
            let lines = self.stderr.lock().expect("lines");
            lines
                .iter()
                .find(|l| l.contains("dropped by kernel"))
                .cloned()
                .ok_or_else(|| format!("{lines:?}"))
        });
        assert!(
            stats.starts_with("0 packets dropped"),
            "tcpdump lost packets: {stats}"
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

/// A test's temporary directory, removed when the test ends, passed or
/// failed (captures and key logs are not left behind).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One frame: (from port, to port, "goaway"|"refused_stream", id, code name).
type Frame = (u16, u16, &'static str, u32, String);

fn code_name(code: u32) -> String {
    drainwatch::decode::event::h2_error_name(code).to_string()
}

/// Every GOAWAY and REFUSED_STREAM frame in the capture, decrypted by tshark.
fn tshark_frames(pcap: &Path, keylog: &Path) -> Vec<Frame> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .arg("-o")
        .arg(format!("tls.keylog_file:{}", keylog.display()))
        .args(["-Y", "http2.type == 7 || http2.type == 3", "-T", "fields"])
        .args(["-E", "occurrence=a", "-E", "aggregator=,"])
        .args(["-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "http2.type"])
        .args(["-e", "http2.streamid", "-e", "http2.goaway.last_stream_id"])
        .args(["-e", "http2.goaway.error", "-e", "http2.rst_stream.error"])
        .output()
        .expect("tshark");
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut frames = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 7, "tshark line {line:?}");
        let list = |s: &str| -> Vec<u32> {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(|x| {
                    x.parse()
                        .unwrap_or_else(|_| panic!("number {x:?} in {line:?}"))
                })
                .collect()
        };
        let (src, dst): (u16, u16) = (f[0].parse().expect("port"), f[1].parse().expect("port"));
        let (types, streams) = (list(f[2]), list(f[3]));
        let (mut last_ids, mut goaway_codes, mut rst_codes) = (
            list(f[4]).into_iter(),
            list(f[5]).into_iter(),
            list(f[6]).into_iter(),
        );
        for (i, ty) in types.iter().enumerate() {
            match ty {
                7 => frames.push((
                    src,
                    dst,
                    "goaway",
                    last_ids.next().expect("last-stream-id"),
                    code_name(goaway_codes.next().expect("goaway code")),
                )),
                3 => {
                    let code = rst_codes.next().expect("rst code");
                    // Only refused streams are reported (CANCEL and the
                    // like are counted, not reported).
                    if code == 7 {
                        frames.push((src, dst, "refused_stream", streams[i], code_name(code)));
                    }
                }
                _ => {}
            }
        }
    }
    frames.sort();
    frames
}

/// Whether this host still has a socket open on local `port` (ESTABLISHED
/// or CLOSE_WAIT, owned by a process: inode set).
fn socket_open(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                c.len() > 9
                    && c[1]
                        .rsplit(':')
                        .next()
                        .and_then(|p| u16::from_str_radix(p, 16).ok())
                        == Some(port)
                    && (c[3] == "01" || c[3] == "08")
                    && c[9] != "0"
            })
    })
}

fn port_of(v: &Value) -> u16 {
    v.as_str()
        .and_then(|s| s.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The daemon's Go frames on `port`, split into (sent, received), each as
/// tshark would list the frame, with the reporting process's pid.
/// A frame and the pid that reported it.
type ByPid = Vec<(Frame, u32)>;

fn reported(d: &Daemon, port: u16) -> (ByPid, ByPid) {
    let (mut sent, mut received) = (Vec::new(), Vec::new());
    for e in d.events() {
        let kind = match e["kind"].as_str() {
            Some("goaway") => "goaway",
            Some("refused_stream") => "refused_stream",
            _ => continue,
        };
        if e["go"].is_null() {
            continue;
        }
        let (l, r) = (port_of(&e["local"]), port_of(&e["remote"]));
        if l != port && r != port {
            continue;
        }
        let w = &e["wire"];
        let id = w["last_stream_id"]
            .as_u64()
            .or_else(|| w["stream_id"].as_u64())
            .expect("an id") as u32;
        let code = w["error_code"].as_str().expect("code").to_string();
        let pid = e["pid"].as_u64().expect("pid") as u32;
        match w["direction"].as_str() {
            Some("sent") => sent.push(((l, r, kind, id, code), pid)),
            Some("received") => received.push(((r, l, kind, id, code), pid)),
            other => panic!("direction {other:?} in {e}"),
        }
    }
    sent.sort();
    received.sort();
    (sent, received)
}

/// (client port, why) of each GOAWAY the server reported sending on `port`.
fn sent_why(d: &Daemon, port: u16) -> Vec<(u16, String)> {
    d.events()
        .iter()
        .filter(|e| e["kind"] == "goaway" && e["wire"]["direction"] == "sent" && !e["go"].is_null())
        .filter(|e| port_of(&e["local"]) == port)
        .map(|e| {
            (
                port_of(&e["remote"]),
                e["go"]["sent"].as_str().unwrap_or("none").to_string(),
            )
        })
        .collect()
}

fn wait_hooked(d: &Daemon, pid: u32) {
    let needle = format!("go: pid {pid} hooked");
    wait_for(
        Duration::from_secs(20),
        &format!("the daemon to hook pid {pid}"),
        || {
            let err = d.stderr();
            if err.contains(&needle) {
                Ok(())
            } else {
                Err(err)
            }
        },
    );
}

/// One server and its clients on `port`; returns what was compared.
fn scenario(d: &Daemon, fx: &Fixture, server_impl: &str, port: u16, dir: &Path) -> String {
    let client_impl = if server_impl == "xnet" { "std" } else { "xnet" };
    let label = format!(
        "Go {} {} (server {server_impl}, client {client_impl})",
        fx.go, fx.variant
    );
    let keylog = dir.join(format!("keys-{port}"));
    let cap = Capture::start(dir.join(format!("cap-{port}.pcap")), port);
    let addr = format!("127.0.0.1:{port}");
    let keylog_arg = keylog.display().to_string();
    let mut server_args = vec![
        "server",
        "-impl",
        server_impl,
        "-addr",
        &addr,
        "-keylog",
        &keylog_arg,
    ];
    if server_impl == "xnet" {
        // One stream per connection: every held stream opens a connection,
        // and a client that opens two at once gets the second refused.
        server_args.extend(["-max-streams", "1"]);
    }
    let mut server = Proc::spawn(&fx.path, &server_args, "server");
    server.wait_line("listening");
    wait_hooked(d, server.pid());

    if server_impl == "xnet" {
        let mut refuse = Proc::spawn(&fx.path, &["refuse", "-addr", &addr], "refuse");
        refuse.wait_line("refused 3 code=7");
        refuse.wait_exit();
    }
    // A client holding streams until the shutdown, and one whose requests
    // the server answers with "Connection: close" (a GOAWAY while serving).
    let mut holder = Proc::spawn(
        &fx.path,
        &[
            "client",
            "-impl",
            client_impl,
            "-addr",
            &addr,
            "-hold",
            "3",
            "-close",
            "0",
        ],
        "holding client",
    );
    holder.wait_line("ready");
    wait_hooked(d, holder.pid());
    holder.send("go");
    let mut closer = Proc::spawn(
        &fx.path,
        &[
            "client",
            "-impl",
            client_impl,
            "-addr",
            &addr,
            "-hold",
            "0",
            "-close",
            "2",
        ],
        "closing client",
    );
    closer.wait_line("ready");
    wait_hooked(d, closer.pid());
    closer.send("go");
    closer.wait_line("done ok=3 failed=0");
    closer.wait_exit();
    server.send("shutdown");
    server.wait_line("shutdown done");
    server.wait_exit();
    holder.wait_line("done ok=4 failed=0");
    let pcap = cap.finish(port);

    let truth = tshark_frames(&pcap, &keylog);
    assert!(!truth.is_empty(), "{label}: tshark found no frame");
    let holder_ports = holder.conn_ports();
    // The server has exited: once the holding client has closed each of its
    // connections (its read loop saw the end), it has read every frame on them.
    for p in &holder_ports {
        wait_for(
            Duration::from_secs(20),
            &format!("the holding client to close port {p}"),
            || {
                if socket_open(*p) {
                    Err("open".to_string())
                } else {
                    Ok(())
                }
            },
        );
    }
    holder.send("exit");
    holder.wait_exit();
    let must_receive: Vec<&Frame> = truth
        .iter()
        .filter(|f| f.2 == "goaway" && holder_ports.contains(&f.1))
        .collect();
    assert!(
        !must_receive.is_empty(),
        "{label}: no GOAWAY to the holding client in {truth:?}"
    );
    // Every frame is in the daemon's events once later events of the same
    // processes are (one ring buffer, read in order): the server's exit,
    // and the holding client's close of each of its connections.
    wait_for(
        Duration::from_secs(20),
        "the server's exit and the holding client's closes among the events",
        || {
            let evs = d.events();
            let exited = evs.iter().any(|e| {
                e["kind"] == "process_exit" && e["pid"].as_u64() == Some(u64::from(server.pid()))
            });
            let closed = holder_ports.iter().all(|p| {
                evs.iter()
                    .any(|e| e["kind"] == "closed" && port_of(&e["local"]) == *p)
            });
            if exited && closed {
                Ok(())
            } else {
                Err(format!("exited {exited}, holder closed {closed}"))
            }
        },
    );
    let (sent, received) = reported(d, port);
    let sent_frames: Vec<Frame> = sent.iter().map(|(f, _)| f.clone()).collect();
    assert_eq!(
        sent_frames,
        truth,
        "{label}: frames reported as sent (left) differ from tshark's (right)\nstderr:\n{}",
        d.stderr()
    );
    for (f, pid) in &sent {
        assert_eq!(
            *pid,
            server.pid(),
            "{label}: {f:?} sent by pid {pid}, not the server"
        );
    }
    let mut left = truth.clone();
    for (f, pid) in &received {
        let i = left
            .iter()
            .position(|t| t == f)
            .unwrap_or_else(|| panic!("{label}: received {f:?} is not in tshark's {truth:?}"));
        left.remove(i);
        assert!(
            *pid == holder.pid() || *pid == closer.pid(),
            "{label}: {f:?} received by pid {pid}, not a client"
        );
    }
    for f in &must_receive {
        assert!(
            received
                .iter()
                .any(|(g, pid)| g == *f && *pid == holder.pid()),
            "{label}: GOAWAY {f:?} to the holding client (pid {}) not reported as received: {received:?}\nmetrics:\n{}",
            holder.pid(),
            d.metrics()
                .lines()
                .filter(|l| l.starts_with("drainwatch_go"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Why each GOAWAY was sent: the closing client's were answers while
    // serving (Connection: close), the holding client's came with the
    // shutdown (after the listener closed).
    let closer_ports = closer.conn_ports();
    for (client, why) in sent_why(d, port) {
        if closer_ports.contains(&client) {
            assert_eq!(
                why, "while_serving",
                "{label}: GOAWAY to the closing client :{client}"
            );
        } else if holder_ports.contains(&client) {
            assert_eq!(
                why, "shutdown",
                "{label}: GOAWAY to the holding client :{client}"
            );
        }
    }
    format!(
        "{label}: {} frames (tshark) = {} sent; {} received reported ({} required)",
        truth.len(),
        sent.len(),
        received.len(),
        must_receive.len()
    )
}

/// The hook plan of every fixture, against what the unstripped builds' own
/// ELF symbol tables say (a source independent of the function table that
/// gobin reads): the same functions at the same entries, and the stripped
/// builds of one Go release hook the same functions.
#[test]
fn function_table_entries_equal_the_symbol_tables() {
    use object::{Object as _, ObjectSymbol as _};
    let fixtures = fixtures();
    for fx in &fixtures {
        let data = std::fs::read(&fx.path).expect("fixture");
        let plan = drainwatch::gobin::plan(&data)
            .unwrap_or_else(|e| panic!("{} {}: {e}", fx.go, fx.variant));
        // The daemon reads only the ranges the plan needs: the same plan.
        assert_eq!(
            drainwatch::gobin::plan_file(&fx.path).as_ref(),
            Ok(&plan),
            "{} {}",
            fx.go,
            fx.variant
        );
        assert_eq!(
            plan.hooks.len(),
            12,
            "{} {}: {:?}",
            fx.go,
            fx.variant,
            plan.skipped
        );
        assert!(plan.skipped.is_empty());
        assert_eq!(
            plan.conn_types.len(),
            5,
            "tls.Conn x2, bufio.Reader, TCPConn x2"
        );
        assert_eq!(
            plan.go_version.as_deref().map(|v| v.starts_with(&fx.go)),
            Some(true),
            "{:?}",
            plan.go_version
        );
        assert_eq!(plan.pie, fx.variant == "pie-stripped");
        for h in &plan.hooks {
            assert!(h.probe_va > h.entry && h.probe_va - h.entry <= 15, "{h:?}");
        }
        if fx.variant != "plain" {
            let file = object::File::parse(&*data).expect("elf");
            assert_eq!(file.symbols().count(), 0, "{} is stripped", fx.variant);
            let plain = fixtures
                .iter()
                .find(|p| p.go == fx.go && p.variant == "plain")
                .expect("plain build");
            let pd = std::fs::read(&plain.path).expect("fixture");
            let pp = drainwatch::gobin::plan(&pd).expect("plan");
            let names = |p: &drainwatch::gobin::Plan| -> Vec<String> {
                p.hooks.iter().map(|h| h.name.clone()).collect()
            };
            assert_eq!(names(&plan), names(&pp));
            continue;
        }
        let file = object::File::parse(&*data).expect("elf");
        let symbols: std::collections::HashMap<String, u64> = file
            .symbols()
            .filter_map(|s| Some((s.name().ok()?.to_string(), s.address())))
            .collect();
        for h in &plan.hooks {
            assert_eq!(symbols.get(&h.name), Some(&h.entry), "{} {}", fx.go, h.name);
        }
        for t in &plan.conn_types {
            assert_eq!(symbols.get(&t.name), Some(&t.pc), "{} {}", fx.go, t.name);
        }
        // Naming an unknown type's method from its address.
        let t = &plan.conn_types[0];
        assert_eq!(
            drainwatch::gobin::function_name(&data, t.pc + 3).as_deref(),
            Some(t.name.as_str())
        );
    }
}

#[test]
fn go_tls_frames_equal_tsharks_for_every_go_release_and_build() {
    if !root_or_skip("go_tls_frames_equal_tsharks_for_every_go_release_and_build") {
        return;
    }
    let _g = serial();
    let fixtures = fixtures();
    let ports: Vec<u16> = (0..fixtures.len() * 2).map(|_| free_port()).collect();
    let port_args: Vec<String> = ports.iter().map(|p| format!("--port={p}")).collect();
    let mut args: Vec<&str> = port_args.iter().map(String::as_str).collect();
    // The Go hooks only: no wire observer, so every frame here is a uprobe's.
    args.push("--no-wire");
    let d = Daemon::start(&args);
    let dir = TempDir::new("dw-goh2");
    let mut summary = Vec::new();
    let mut i = 0;
    for fx in &fixtures {
        for server_impl in ["xnet", "std"] {
            summary.push(scenario(&d, fx, server_impl, ports[i], &dir));
            i += 1;
        }
    }
    let metrics = d.metrics();
    let unconfigured = common::parse_metric(
        &metrics,
        "drainwatch_go_h2_unreported_total{reason=\"unconfigured\"}",
    );
    let unattributed = common::parse_metric(
        &metrics,
        "drainwatch_go_h2_unreported_total{reason=\"unattributed\"}",
    );
    d.stop();
    for s in &summary {
        eprintln!("{s}");
    }
    assert_eq!(unattributed, 0.0, "every frame's connection was found");
    assert_eq!(
        unconfigured, 0.0,
        "every process was hooked before its frames (the test waits for it)"
    );
    let per_copy: BTreeMap<&str, usize> = summary.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(if s.contains("server xnet") {
            "xnet"
        } else {
            "std"
        })
        .or_default() += 1;
        m
    });
    assert_eq!(per_copy.values().sum::<usize>(), 18);
}

/// A Go server shutting down as kube-apiserver does (SIGTERM, /readyz red,
/// a drain delay, then `Shutdown()`, which sends GOAWAY over TLS) gives one
/// rollout timeline with every phase, the GOAWAY among them from the
/// uprobe: sigterm, readyz_red, listener_closed, goaway_sent, exit (the
/// kernel's in that order); the server's GOAWAYs say `shutdown` (or
/// `answer` where the poller's client said GOAWAY first, and those are not
/// the phase), and the held streams ended cleanly (the client's own count).
#[test]
fn go_tls_rollout_timeline_has_the_goaway_phase() {
    if !root_or_skip("go_tls_rollout_timeline_has_the_goaway_phase") {
        return;
    }
    let _g = serial();
    let fixtures = fixtures();
    let fx = fixtures
        .iter()
        .find(|f| f.go == "go1.24" && f.variant == "stripped")
        .expect("a stripped Go 1.24 build");
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}/");
    let d = Daemon::start(&[
        &format!("--port={port}"),
        "--no-wire",
        "--no-kube",
        "--watch-comm",
        "h2probe",
        "--instance",
        "m1",
        "--apiserver-url",
        &url,
        "--insecure-skip-tls-verify",
        "--readyz-interval",
        "100ms",
        "--shutdown-delay",
        "1s",
    ]);
    let dir = TempDir::new("dw-goh2-roll");
    let addr = format!("127.0.0.1:{port}");
    let keylog = dir.join("keys").display().to_string();
    let mut server = Proc::spawn(
        &fx.path,
        &[
            "server", "-impl", "xnet", "-addr", &addr, "-keylog", &keylog, "-drain", "3s",
        ],
        "server",
    );
    server.wait_line("listening");
    wait_hooked(&d, server.pid());
    let mut holder = Proc::spawn(
        &fx.path,
        &[
            "client", "-impl", "xnet", "-addr", &addr, "-hold", "2", "-close", "0",
        ],
        "holding client",
    );
    holder.wait_line("ready");
    wait_hooked(&d, holder.pid());
    holder.send("go");
    // The poller has seen /readyz green, so its turning red is a change.
    wait_for(Duration::from_secs(10), "/readyz seen green", || {
        let m = d.metrics();
        if m.lines().any(|l| {
            l.starts_with("drainwatch_apiserver_health{")
                && l.contains("readyz")
                && l.ends_with(" 1")
        }) {
            Ok(())
        } else {
            Err(m
                .lines()
                .filter(|l| l.contains("apiserver_health"))
                .collect::<Vec<_>>()
                .join("\n"))
        }
    });
    // SAFETY: signalling the server we started.
    unsafe { libc::kill(server.pid() as i32, libc::SIGTERM) };
    server.wait_line("draining");
    server.wait_line("shutdown done");
    server.wait_exit();
    holder.wait_line("done ok=3 failed=0");
    holder.send("exit");
    holder.wait_exit();
    let phases = wait_for(Duration::from_secs(15), "the rollout's phases", || {
        let (code, body) = d.get("/api/v1/timelines");
        if code != 200 {
            return Err(format!("{code} {body}"));
        }
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        // The rollout's timeline (an earlier one may hold /readyz's start).
        let want = [
            "sigterm",
            "readyz_red",
            "listener_closed",
            "goaway_sent",
            "exit",
        ];
        v["timelines"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|tl| {
                tl["phases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| Some((p["kind"].as_str()?.to_string(), p["t_ns"].as_u64()?)))
                    .collect::<Vec<(String, u64)>>()
            })
            .find(|phases| want.iter().all(|k| phases.iter().any(|(x, _)| x == k)))
            .ok_or(body)
    });
    // Kernel events of one process, causally ordered: the signal, the
    // listener closed by Shutdown(), the GOAWAYs it then sent, the exit.
    let t = |k: &str| {
        phases
            .iter()
            .find(|(x, _)| x == k)
            .map(|(_, t)| *t)
            .expect("phase")
    };
    assert!(
        t("sigterm") < t("listener_closed")
            && t("listener_closed") <= t("goaway_sent")
            && t("goaway_sent") <= t("exit"),
        "phases out of order: {phases:?}"
    );
    // The server's GOAWAYs: at its shutdown, or answers to a client that
    // said GOAWAY first on that connection (the /readyz poller closing its
    // connections politely); none "while serving".
    let events = d.events();
    let sent: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "goaway" && e["wire"]["direction"] == "sent")
        .collect();
    let client_first: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["kind"] == "goaway"
                && e["wire"]["direction"] == "received"
                && e["go"]["role"] == "server"
        })
        .map(|e| &e["sock_id"])
        .collect();
    assert!(
        sent.iter().any(|e| e["go"]["sent"] == "shutdown"),
        "no shutdown GOAWAY in {sent:#?}"
    );
    for e in &sent {
        match e["go"]["sent"].as_str() {
            Some("shutdown") => {}
            Some("answer") => assert!(
                client_first.contains(&&e["sock_id"]),
                "an answer with no client GOAWAY before it: {e}"
            ),
            other => panic!("GOAWAY sent {other:?} during the rollout: {e}"),
        }
    }
    d.stop();
}

/// A real client we did not build: the machine's kubectl (a stripped
/// Kubernetes release binary; its own x/net) watching the lab's apiserver
/// stand-in over TLS. When the stand-in shuts down gracefully it sends
/// GOAWAY (hyper's two-step: 2^31-1, then the last stream it took) on every
/// HTTP/2 connection, and records how many connections that was: kubectl
/// reports receiving them, on that many connections, all its own, the
/// last frame of each naming a real stream.
#[test]
fn kubectl_watch_reports_the_standins_goaway_over_tls() {
    if !root_or_skip("kubectl_watch_reports_the_standins_goaway_over_tls") {
        return;
    }
    let _g = serial();
    let port = free_port();
    let dir = TempDir::new("dw-goh2-kubectl");
    let d = Daemon::start(&[&format!("--port={port}"), "--no-wire", "--no-kube"]);
    let listen = format!("127.0.0.1:{port}");
    let standin = common::start_standin_here(
        &dir,
        &[
            "--name",
            "m1",
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
            "127.0.0.1",
        ],
    );
    let mut standin = common::KillOnDrop(standin);
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: https://{listen}\n    certificate-authority: {}\nusers:\n- name: lab\n  user:\n    token: t\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n    namespace: default\ncurrent-context: lab\n",
            dir.join("pki/ca.crt").display()
        ),
    )
    .expect("kubeconfig");
    let mut kubectl = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "pods", "--watch"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl");
    let truth = dir.join("lifecycle.jsonl");
    // Its watch is open (the stand-in's record) and the daemon hooked it.
    wait_for(Duration::from_secs(20), "kubectl's watch to start", || {
        let t = std::fs::read_to_string(&truth).unwrap_or_default();
        if t.contains("watch_started") {
            Ok(())
        } else {
            Err(t)
        }
    });
    wait_hooked(&d, kubectl.id());
    // SAFETY: signalling the stand-in we started.
    unsafe { libc::kill(standin.0.id() as i32, libc::SIGTERM) };
    let _ = standin.0.wait();
    let record = std::fs::read_to_string(&truth).expect("truth");
    let connections = record
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "goaway_sent")
        .and_then(|v| v["detail"]["connections"].as_u64())
        .expect("the stand-in records the GOAWAYs it sent");
    assert!(connections >= 1, "{record}");
    let received = wait_for(Duration::from_secs(15), "kubectl's GOAWAYs", || {
        let evs: Vec<Value> = d
            .events()
            .into_iter()
            .filter(|e| {
                e["kind"] == "goaway"
                    && e["wire"]["direction"] == "received"
                    && port_of(&e["remote"]) == port
            })
            .collect();
        let conns: std::collections::BTreeSet<&str> =
            evs.iter().filter_map(|e| e["sock_id"].as_str()).collect();
        // Both frames of each connection (the second names a real stream).
        if conns.len() as u64 == connections
            && conns.iter().all(|c| {
                evs.iter().any(|e| {
                    e["sock_id"].as_str() == Some(*c)
                        && e["wire"]["last_stream_id"].as_u64() < Some(2_147_483_647)
                })
            })
        {
            Ok(evs)
        } else {
            Err(format!("{evs:#?}"))
        }
    });
    for e in &received {
        assert_eq!(e["pid"].as_u64(), Some(u64::from(kubectl.id())), "{e}");
        assert_eq!(e["go"]["http2"], "x/net", "kubectl uses x/net: {e}");
        assert_eq!(e["go"]["role"], "client", "{e}");
        assert_eq!(e["wire"]["error_code"], "NO_ERROR", "{e}");
    }
    let _ = kubectl.kill();
    let _ = kubectl.wait();
    d.stop();
}

/// A wrapper looked at before it execs the real server (a script named as
/// the apiserver that ends in `exec` of the binary) is looked at again when
/// the server it became opens its listener: its GOAWAYs are reported. (The
/// daemon used to remember the pid and never look again.)
#[test]
fn a_wrapper_that_execs_the_go_server_is_hooked_after_its_exec() {
    if !root_or_skip("a_wrapper_that_execs_the_go_server_is_hooked_after_its_exec") {
        return;
    }
    let _g = serial();
    let fx = fixtures()
        .into_iter()
        .find(|f| f.go == "go1.24" && f.variant == "stripped")
        .expect("the Go 1.24 stripped fixture");
    let port = free_port();
    let dir = TempDir::new("dw-goh2-exec");
    // A shell under a watched name: its start is an exec event the daemon
    // acts on, and it is not a Go program.
    let wrapper = dir.join("dwwrapper");
    std::fs::copy("/bin/sh", &wrapper).expect("copy /bin/sh");
    let d = Daemon::start(&[
        &format!("--port={port}"),
        "--no-wire",
        "--no-kube",
        "--watch-comm",
        "dwwrapper",
    ]);
    let addr = format!("127.0.0.1:{port}");
    let script = format!(
        "read go; exec {} server -impl xnet -addr {addr}",
        fx.path.display()
    );
    let mut server = Proc::spawn(&wrapper, &["-c", &script], "wrapper");
    let refused = format!(
        "go: not hooking {} (pid {})",
        wrapper.display(),
        server.pid()
    );
    wait_for(Duration::from_secs(20), "the wrapper looked at", || {
        let err = d.stderr();
        if err.contains(&refused) {
            Ok(())
        } else {
            Err(err)
        }
    });
    server.send("go");
    server.wait_line("listening");
    wait_hooked(&d, server.pid());
    let mut holder = Proc::spawn(
        &fx.path,
        &[
            "client", "-impl", "xnet", "-addr", &addr, "-hold", "1", "-close", "0",
        ],
        "holding client",
    );
    holder.wait_line("ready");
    holder.send("go");
    server.send("shutdown");
    server.wait_line("shutdown done");
    server.wait_exit();
    holder.wait_line("done ok=2 failed=0");
    holder.send("exit");
    holder.wait_exit();
    // Its GOAWAY is among the events once its exit is (one ring buffer,
    // read in order; the pid stayed watched across the exec).
    wait_for(
        Duration::from_secs(20),
        "the server's exit among the events",
        || {
            d.events()
                .iter()
                .any(|e| {
                    e["kind"] == "process_exit"
                        && e["pid"].as_u64() == Some(u64::from(server.pid()))
                })
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        },
    );
    let (sent, _) = reported(&d, port);
    let from_server: Vec<_> = sent
        .iter()
        .filter(|(f, pid)| *pid == server.pid() && f.2 == "goaway")
        .collect();
    assert_eq!(
        from_server.len(),
        1,
        "{sent:?}; GOAWAY events: {:#?}\nunreported: {:?}\nstderr:\n{}",
        d.events()
            .into_iter()
            .filter(|e| e["kind"] == "goaway")
            .collect::<Vec<_>>(),
        d.metrics()
            .lines()
            .filter(|l| l.starts_with("drainwatch_go_h2_unreported_total"))
            .collect::<Vec<_>>(),
        d.stderr()
    );
}
