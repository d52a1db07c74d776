//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/`, each started from
//! the repository's real inputs and run for a bounded time.
//!
//! The corpus each run grows stays in `<target>/fuzz/corpus/<name>` (a later
//! run starts from it); the starting inputs are copied into
//! `<target>/fuzz/inputs/<name>` on every run; `fuzz/regressions/<name>` holds every input that once
//! crashed, run first each time. A crash fails with the input's path.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{apt_install, cargo, have, root_dir, run};

/// Where a target's starting inputs come from, relative to the repository: files, or
/// every file under a directory whose name ends in one of `exts` (all when
/// empty).
struct Target {
    name: &'static str,
    inputs: &'static [&'static str],
    exts: &'static [&'static str],
    /// Files outside the repository (the running kernel's tracefs).
    host: &'static [&'static str],
}

const TARGETS: &[Target] = &[
    Target {
        name: "tracefs",
        inputs: &["probe-user/tests/fixtures"],
        exts: &["format"],
        host: &[
            "/sys/kernel/tracing/events/sock/inet_sock_set_state/format",
            "/sys/kernel/tracing/events/tcp/tcp_send_reset/format",
            "/sys/kernel/tracing/events/tcp/tcp_receive_reset/format",
            "/sys/kernel/tracing/events/signal/signal_generate/format",
        ],
    },
    Target {
        name: "event",
        inputs: &["fuzz/inputs/event"],
        exts: &[],
        host: &[],
    },
    Target {
        name: "pcap",
        inputs: &["fuzz/inputs/pcap"],
        exts: &[],
        host: &[],
    },
    Target {
        name: "audit",
        inputs: &["ops/tests/fixtures", "deploy"],
        exts: &["yaml", "yml"],
        host: &[],
    },
    Target {
        name: "kubeconfig",
        inputs: &["fuzz/inputs/kubeconfig"],
        exts: &[],
        host: &[],
    },
    Target {
        name: "gobin",
        inputs: &["fuzz/inputs/gobin"],
        exts: &[],
        host: &[],
    },
    Target {
        name: "cgroup",
        inputs: &["fuzz/inputs/cgroup"],
        exts: &[],
        host: &["/proc/self/cgroup", "/proc/1/cgroup"],
    },
    Target {
        name: "recording",
        inputs: &["ops/tests/fixtures"],
        exts: &["jsonl"],
        host: &[],
    },
];

/// Starting inputs larger than this would only slow every iteration down.
const MAX_INPUT_BYTES: u64 = 64 << 10;

fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root_dir().join("target"))
}

/// cargo-fuzz (built with the nightly toolchain, which it needs for the
/// sanitizer flags anyway) and the C++ compiler libfuzzer-sys builds
/// libFuzzer with.
fn setup() -> anyhow::Result<()> {
    if !have("c++") {
        apt_install(&["g++"], "the fuzz targets (libFuzzer is C++)")?;
    }
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        eprintln!("xtask: installing cargo-fuzz (about a minute)");
        run(cargo().args(["+nightly", "install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

fn copy_inputs(t: &Target, root: &Path, into: &Path) -> anyhow::Result<usize> {
    let _ = fs::remove_dir_all(into);
    fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    let mut files = Vec::new();
    for s in t.inputs {
        collect(&root.join(s), t.exts, &mut files)?;
    }
    files.extend(t.host.iter().map(PathBuf::from).filter(|p| p.is_file()));
    let mut n = 0;
    for f in files {
        if fs::metadata(&f).map(|m| m.len()).unwrap_or(u64::MAX) > MAX_INPUT_BYTES {
            continue;
        }
        // Flattened, with the path kept in the name so sources never collide.
        let name = f
            .strip_prefix(root)
            .unwrap_or(&f)
            .to_string_lossy()
            .trim_start_matches('/')
            .replace('/', "_");
        // Tracefs files report size 0 and cannot be copied with fs::copy's
        // size hint: read and write them.
        let data =
            fs::read(&f).with_context(|| format!("reading starting input {}", f.display()))?;
        fs::write(into.join(name), data)
            .with_context(|| format!("writing starting input into {}", into.display()))?;
        n += 1;
    }
    Ok(n)
}

fn collect(path: &Path, exts: &[&str], out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if path.is_file() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        if exts.is_empty()
            || exts
                .iter()
                .any(|e| name == *e || name.ends_with(&format!(".{e}")))
        {
            out.push(path.to_path_buf());
        }
        return Ok(());
    }
    let entries = fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?;
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for e in entries {
        collect(&e, exts, out)?;
    }
    Ok(())
}

/// The value of libFuzzer's final `stat::NAME:` line, if printed.
fn stat(log: &str, name: &str) -> Option<u64> {
    let key = format!("stat::{name}:");
    log.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

/// Builds every target once, then runs `only` (or all) for `seconds` each.
pub fn fuzz(seconds: u64, only: Option<&str>) -> anyhow::Result<()> {
    let selected: Vec<&Target> = TARGETS
        .iter()
        .filter(|t| only.is_none_or(|o| o == t.name))
        .collect();
    if selected.is_empty() {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        bail!(
            "no fuzz target {:?}; targets: {}",
            only.unwrap_or_default(),
            names.join(", ")
        );
    }
    setup()?;
    let root = root_dir();
    let fuzz_dir = root.join("fuzz");
    let work = target_dir().join("fuzz");
    let started = Instant::now();
    // `--dev`: see fuzz/Cargo.toml (build time is CI time).
    run(cargo()
        .current_dir(&fuzz_dir)
        .args(["+nightly", "fuzz", "build", "--dev"])
        .env_remove("RUSTUP_TOOLCHAIN"))?;
    eprintln!(
        "xtask: fuzz targets built in {} s",
        started.elapsed().as_secs()
    );
    let mut failed = Vec::new();
    for t in selected {
        let corpus = work.join("corpus").join(t.name);
        let inputs = work.join("inputs").join(t.name);
        let artifacts = work.join("artifacts").join(t.name);
        let regressions = fuzz_dir.join("regressions").join(t.name);
        for d in [&corpus, &artifacts, &regressions] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let n = copy_inputs(t, &root, &inputs)?;
        let log_path = work.join(format!("{}.log", t.name));
        let log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        eprintln!(
            "xtask: fuzz {} for {seconds} s ({n} starting inputs)",
            t.name
        );
        let status = cargo()
            .current_dir(&fuzz_dir)
            .args(["+nightly", "fuzz", "run", "--dev", t.name])
            .args([&corpus, &inputs, &regressions])
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            // A parser that needs more than this for one input is a bug.
            .args(["-rss_limit_mb=2048", "-malloc_limit_mb=512", "-timeout=10"])
            .args(["-print_final_stats=1", "-close_fd_mask=1"])
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .env_remove("RUSTUP_TOOLCHAIN")
            .stdout(log.try_clone().context("log file")?)
            .stderr(log)
            .status()
            .with_context(|| format!("cannot start cargo fuzz run {}", t.name))?;
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        if status.success() {
            eprintln!(
                "xtask: fuzz {}: ok, {} execs ({}/s), corpus {} inputs",
                t.name,
                stat(&text, "number_of_executed_units").unwrap_or(0),
                stat(&text, "average_exec_per_sec").unwrap_or(0),
                fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0),
            );
            continue;
        }
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for l in tail.into_iter().rev() {
            eprintln!("  {l}");
        }
        let input = text
            .lines()
            .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim()))
            .unwrap_or("(see the log)");
        eprintln!(
            "xtask: fuzz {}: FAILED ({status}); input {input}; log {}",
            t.name,
            log_path.display()
        );
        failed.push(format!("{} ({input})", t.name));
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {}; fix the parser, add a unit test, and copy the input \
             into fuzz/regressions/<target>/",
            failed.join(", ")
        );
    }
    Ok(())
}
