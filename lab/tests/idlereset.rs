//! The idle-reset box's RSTs are accepted by real TCP stacks: two hosts and a router
//! (network namespaces), connections opened before the box starts (seen mid-stream),
//! one left idle past the timeout (both ends' reads fail with ECONNRESET, at the
//! timeout), one with TCP keepalive below the timeout (survives three timeouts and still
//! carries data both ways). Needs root; skips with a reason otherwise.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drainwatch_lab::idlereset::ResetRecord;
use drainwatch_lab::record;
use drainwatch_lab::topo::Lab;

fn skip_unless_root() -> bool {
    if drainwatch_lab::cmd::is_root() {
        return false;
    }
    assert!(
        std::env::var_os("DRAINWATCH_NO_SKIP").is_none(),
        "the lab needs root: DRAINWATCH_NO_SKIP is set, nothing may skip"
    );
    eprintln!("skipped: the lab creates network namespaces and needs root");
    true
}

/// Runs `f` on a thread inside network namespace `ns`: sockets it makes live there.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        // SAFETY: a valid namespace fd; only this thread changes namespace.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One byte each way.
fn exchange(c: &mut TcpStream, s: &mut TcpStream) {
    let mut b = [0u8; 1];
    c.write_all(b"q").expect("client write");
    s.read_exact(&mut b).expect("server read");
    s.write_all(b"r").expect("server write");
    c.read_exact(&mut b).expect("client read");
}

#[test]
fn box_resets_idle_flows_at_both_ends_and_keepalive_survives() {
    if skip_unless_root() {
        return;
    }
    let idle = Duration::from_secs(2);
    let (ca, ra) = (Ipv4Addr::new(198, 18, 2, 10), Ipv4Addr::new(198, 18, 2, 1));
    let (rb, sb) = (Ipv4Addr::new(198, 18, 3, 1), Ipv4Addr::new(198, 18, 3, 10));
    let mut lab = Lab::new();
    for h in ["a", "r", "b"] {
        lab.add_host(h).expect("host");
    }
    lab.link(("a", "eth0", ca), ("r", "eth0", ra), 24)
        .expect("link");
    lab.link(("r", "eth1", rb), ("b", "eth0", sb), 24)
        .expect("link");
    lab.route("a", "198.18.3.0/24", ra).expect("route");
    lab.route("b", "198.18.2.0/24", rb).expect("route");
    lab.sysctl("r", "net.ipv4.ip_forward", "1").expect("fwd");
    let (ns_a, ns_r, ns_b) = (
        lab.ns("a").expect("ns").to_string(),
        lab.ns("r").expect("ns").to_string(),
        lab.ns("b").expect("ns").to_string(),
    );

    // Both connections exist before the box starts: it must pick them up mid-stream.
    let listener = in_ns(&ns_b, move || {
        TcpListener::bind((sb, 7000)).expect("listen")
    });
    let (mut plain, mut kept) = in_ns(&ns_a, move || {
        let plain = TcpStream::connect((sb, 7000)).expect("connect");
        let kept = TcpStream::connect((sb, 7000)).expect("connect");
        // client-go's dialer: keepalive probes after 1 s idle, every 1 s (the kernel's
        // unit is the second), well inside the 2 s timeout.
        let ka = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(1))
            .with_interval(Duration::from_secs(1));
        socket2::SockRef::from(&kept)
            .set_tcp_keepalive(&ka)
            .expect("keepalive");
        (plain, kept)
    });
    let (s1, p1) = listener.accept().expect("accept");
    let (s2, _) = listener.accept().expect("accept");
    let (mut plain_s, mut kept_s) = if p1 == plain.local_addr().expect("addr") {
        (s1, s2)
    } else {
        (s2, s1)
    };
    exchange(&mut plain, &mut plain_s);
    exchange(&mut kept, &mut kept_s);

    let dir = std::env::temp_dir().join(format!("dwlab-idlebox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let out = dir.join("box.jsonl");
    let mut child = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &ns_r, env!("CARGO_BIN_EXE_drainwatch-lab")])
            .args(["idle-reset-box", "--iface", "eth0", "--iface", "eth1"])
            .args(["--idle", "2s", "--duration", "60s", "--out"])
            .arg(&out)
            .stdout(Stdio::piped())
            .spawn()
            .expect("box"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        while let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(10)).expect("box READY");
    assert!(ready.starts_with("READY"), "{ready}");

    // The box's first sight of either flow: one exchange each, mid-stream.
    exchange(&mut plain, &mut plain_s);
    let last = Instant::now();
    exchange(&mut kept, &mut kept_s);

    // Idle: both ends of the plain connection are reset at the timeout.
    plain.set_read_timeout(Some(idle * 3)).expect("timeout");
    let mut b = [0u8; 1];
    let err = plain.read(&mut b).expect_err("client read must fail");
    let after = last.elapsed().as_secs_f64();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "client: {err}");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNRESET));
    assert!(
        (after - 2.0).abs() <= 0.2,
        "client reset after {after:.3}s idle, timeout 2s"
    );
    plain_s.set_read_timeout(Some(idle)).expect("timeout");
    let err = plain_s.read(&mut b).expect_err("server read must fail");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "server: {err}");

    // Keepalive: three timeouts without data, then data both ways still flows.
    kept.set_read_timeout(Some(idle * 3)).expect("timeout");
    let err = kept.read(&mut b).expect_err("no data is due");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "keepalive connection: {err}"
    );
    kept.set_read_timeout(Some(idle)).expect("timeout");
    kept_s.set_read_timeout(Some(idle)).expect("timeout");
    exchange(&mut kept, &mut kept_s);

    // The box's own record: exactly the plain flow, RSTs from each end's own ACK.
    // SAFETY: a pid of our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = child.0.wait().expect("box exit");
    assert!(status.success(), "box exited {status}");
    let recs: Vec<ResetRecord> = record::read_lines(&out).expect("records");
    let resets: Vec<&ResetRecord> = recs.iter().filter(|r| r.event == "reset").collect();
    assert_eq!(resets.len(), 1, "{resets:?}");
    let r = resets[0];
    let ends = [r.a.clone().expect("a"), r.b.clone().expect("b")];
    let plain_ends = [
        plain.local_addr().expect("addr").to_string(),
        plain_s.local_addr().expect("addr").to_string(),
    ];
    assert!(
        ends == plain_ends || ends == [plain_ends[1].clone(), plain_ends[0].clone()],
        "{ends:?} vs {plain_ends:?}"
    );
    let idle_s = r.idle_s.expect("idle");
    assert!((2.0..=2.2).contains(&idle_s), "box measured {idle_s}s idle");
    for rst in [&r.rst_to_a, &r.rst_to_b] {
        assert_eq!(rst.as_ref().map(|x| x.from.as_str()), Some("ack"));
    }
    let counts = recs.iter().find_map(|r| r.counts).expect("summary line");
    assert_eq!(
        (counts.reset, counts.rsts_sent, counts.rsts_unsent),
        (1, 2, 0)
    );
    println!("box: {counts:?}; client reset after {after:.3}s, box idle {idle_s:.3}s");
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `clean` removes the pod cgroups a killed `azure-idle-reset-client` run left behind,
/// killing what still runs in them.
#[test]
fn clean_removes_pod_cgroups_left_behind() {
    if skip_unless_root() {
        return;
    }
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    let cg2 = drainwatch_lab::scenario::cgroup2_root(&mounts).expect("a cgroup2 mount");
    let top = cg2.join(format!("dwlab-cleantest{}", std::process::id()));
    let leaf = top.join("kubepods.slice/kubepods-besteffort.slice/cri-containerd-x.scope");
    std::fs::create_dir_all(&leaf).expect("mkdir");
    let child = KillOnDrop(
        Command::new("sleep")
            .arg("300")
            .stdin(Stdio::null())
            .spawn()
            .expect("sleep"),
    );
    let pid = child.0.id();
    std::fs::write(leaf.join("cgroup.procs"), pid.to_string()).expect("move");
    let removed = drainwatch_lab::scenario::clean_cgroups().expect("clean");
    assert!(removed.contains(&top), "{removed:?}");
    assert!(!top.exists(), "{} left", top.display());
    let mut child = child;
    let status = child.0.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
}
