//! Lab topology: hosts reach each other, nothing routes out, and nothing survives a
//! teardown or a `clean` after a crash. Needs root.

mod common;

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use drainwatch_lab::topo::{self, Lab};

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

fn in_ns(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec")
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("State:") && !l.contains("zombie"))
        })
        .unwrap_or(false)
}

/// A process running in namespace `ns`; returns once it is in there (its network
/// namespace is `ns`), so a teardown or `clean` that looks for it will find it.
fn spawn_sleep(ns: &str) -> std::process::Child {
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "sleep", "60"])
        .spawn()
        .expect("sleep");
    let want = std::fs::metadata(format!("/run/netns/{ns}"))
        .expect("netns file")
        .ino();
    common::wait_for(
        Duration::from_secs(10),
        &format!("pid {} to enter namespace {ns}", child.id()),
        || match std::fs::metadata(format!("/proc/{}/ns/net", child.id())) {
            Ok(m) if m.ino() == want => Ok(()),
            Ok(m) => Err(format!("in net namespace inode {}", m.ino())),
            Err(e) => Err(e.to_string()),
        },
    );
    child
}

#[test]
fn hosts_talk_over_lan_and_links_and_nothing_routes_out() {
    if skip_unless_root() {
        return;
    }
    let mut lab = Lab::new();
    lab.add_lan("lan").expect("lan");
    for (h, a) in [("a", 2), ("b", 3)] {
        lab.add_host(h).expect("host");
        lab.attach(h, "lan", "eth0", Ipv4Addr::new(198, 18, 9, a), 24)
            .expect("attach");
    }
    lab.add_host("c").expect("host");
    lab.link(
        ("b", "eth1", Ipv4Addr::new(198, 18, 10, 1)),
        ("c", "eth0", Ipv4Addr::new(198, 18, 10, 2)),
        24,
    )
    .expect("link");
    // The timer server greets every connection: a greeting proves the path works.
    let mut servers = Vec::new();
    for h in ["b", "c"] {
        let mut s = Command::new("ip")
            .args([
                "netns",
                "exec",
                lab.ns(h).expect("ns"),
                env!("CARGO_BIN_EXE_drainwatch-lab"),
            ])
            .args([
                "timer-server",
                "--port",
                "0.0.0.0:7000=1s",
                "--duration",
                "10s",
                "--out",
                "/dev/null",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("timer server");
        lab.track_pid(s.id());
        let mut line = String::new();
        let mut out = std::io::BufReader::new(s.stdout.take().expect("stdout"));
        std::io::BufRead::read_line(&mut out, &mut line).expect("LISTENING");
        servers.push(s);
    }
    let reach = |from: &str, to: &str| {
        let o = in_ns(
            lab.ns(from).expect("ns"),
            &[
                "curl",
                "-s",
                "--max-time",
                "0.5",
                &format!("telnet://{to}:7000"),
            ],
        );
        String::from_utf8_lossy(&o.stdout).contains("Hello")
    };
    assert!(reach("a", "198.18.9.3"), "a cannot reach b over the LAN");
    assert!(reach("b", "198.18.10.2"), "b cannot reach c over the link");
    assert!(!reach("a", "198.18.10.2"), "a reaches c without a route");
    for h in ["a", "b", "c"] {
        let routes =
            String::from_utf8_lossy(&in_ns(lab.ns(h).expect("ns"), &["ip", "route"]).stdout)
                .into_owned();
        assert!(
            !routes.contains("default"),
            "{h} has a default route: {routes}"
        );
    }
    assert!(lab.add_host("Bad_Name").is_err());
}

#[test]
fn drop_removes_namespaces_and_processes() {
    if skip_unless_root() {
        return;
    }
    let prefix;
    let mut child;
    {
        let mut lab = Lab::new();
        prefix = lab.prefix();
        lab.add_host("x").expect("host");
        lab.add_lan("lan").expect("lan");
        lab.attach("x", "lan", "eth0", Ipv4Addr::new(198, 18, 11, 2), 24)
            .expect("attach");
        lab.nft(
            "x",
            "table inet dwlabtest {\n  chain c {\n    type filter hook input priority 0;\n  }\n}\n",
        )
        .expect("nft");
        child = spawn_sleep(lab.ns("x").expect("ns"));
        lab.track_pid(child.id());
        assert_eq!(topo::lab_namespaces(&prefix).expect("list").len(), 2);
    }
    let _ = child.wait();
    assert!(
        topo::lab_namespaces(&prefix).expect("list").is_empty(),
        "namespaces left behind"
    );
    assert!(!alive(child.id()), "process left behind");
    // Interfaces and nft tables lived only inside the namespaces: the root namespace has none.
    let links = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-o", "link"])
            .output()
            .expect("ip")
            .stdout,
    )
    .into_owned();
    assert!(!links.contains("dwlab"), "{links}");
    let tables = String::from_utf8_lossy(
        &Command::new("nft")
            .args(["list", "tables"])
            .output()
            .expect("nft")
            .stdout,
    )
    .into_owned();
    assert!(!tables.contains("dwlabtest"), "{tables}");
}

#[test]
fn clean_removes_what_a_crashed_run_left() {
    if skip_unless_root() {
        return;
    }
    let mut lab = Lab::new();
    let prefix = lab.prefix();
    lab.add_host("y").expect("host");
    // Not tracked: as if the runner had died before recording it.
    let mut child = spawn_sleep(lab.ns("y").expect("ns"));
    std::mem::forget(lab);
    let removed = topo::clean_prefix(&prefix).expect("clean");
    assert_eq!(removed, vec![format!("{prefix}y")]);
    let _ = child.wait();
    assert!(!alive(child.id()), "clean left the process running");
    assert!(topo::lab_namespaces(&prefix).expect("list").is_empty());
}
