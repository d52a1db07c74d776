//! `cargo xtask`: everything a newcomer or CI needs, set-up included.
//!
//! - `setup`: installs what building and testing need (rust-src for the
//!   nightly toolchain, bpf-linker, Debian packages for the tests).
//! - `run`: set-up, build, then start the daemon with root rights.
//! - `test`: set-up, rustfmt and clippy checks, then every test (the kernel
//!   tests need root and run for real); `--repeat N` runs the
//!   timing-sensitive test binaries N times each instead.
//! - `lint`: rustfmt and clippy for every crate, the eBPF one included.
//! - `lab`: a lab scenario (`drainwatch-lab run`) as root.
//! - `vm-test`: `drainwatch selftest` on Debian's 5.10, 6.1 and 6.12 kernels
//!   under QEMU and natively, with an instruction budget per program.
//! - `soak`: the long-run bounds check; `bench`: the benchmarks.
//! - `fuzz`: the cargo-fuzz targets in `fuzz/` (parsers of untrusted
//!   input), started from the repository's fixtures, each for a bounded time.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod bench;
mod compare;
mod fixedrate;
mod fuzz;
mod gofixtures;
mod goh2bench;
mod hotpath;
mod repeat;
mod scale;
mod soak;
mod vmtest;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain pieces and packages the build and tests need.
    Setup {
        /// Skip Debian packages (only Rust pieces).
        #[arg(long)]
        no_apt: bool,
    },
    /// Build and run the daemon (as root: via sudo when not root). Extra
    /// arguments go to `drainwatch run`.
    Run {
        /// Build in release mode.
        #[arg(long)]
        release: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the whole test suite: formatting, clippy, unit and kernel tests.
    Test {
        /// Skip rustfmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Instead of the suite: build the timing-sensitive test binaries
        /// once and run each N times in a row, counting passes and failures
        /// per binary (fails if any run failed).
        #[arg(long, value_name = "N")]
        repeat: Option<u32>,
        /// With --repeat: only these test binaries (e.g. `kernel,standin`).
        #[arg(long, value_delimiter = ',', requires = "repeat")]
        only: Vec<String>,
        /// Extra arguments for `cargo test` (e.g. a test name filter); with
        /// --repeat, for each test binary.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// rustfmt and clippy (-D warnings) for every crate, the eBPF one included.
    Lint,
    /// Fetch Debian's Go 1.19, 1.22 and 1.24 (a private apt index; the host
    /// is untouched) and build the Go HTTP/2 test program with each,
    /// unstripped, stripped and stripped PIE, into target/go/fixtures.
    GoFixtures,
    /// Run a lab scenario as root (`all`, `list` and `clean` too); extra
    /// arguments go to `drainwatch-lab run`.
    Lab {
        what: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// `drainwatch selftest` on Debian's newest 5.10, 6.1 and 6.12 cloud
    /// kernels under QEMU, and natively when nothing else uses BPF here;
    /// checks each program's verified instruction count against a budget.
    VmTest,
    /// Fuzz the parsers of untrusted input (tracefs formats, ring-buffer
    /// records, captures, manifests, kubeconfigs, recordings) for a bounded
    /// time each; installs cargo-fuzz when missing. Fails on a crash, with
    /// the input's path.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// One target (tracefs, event, pcap, audit, kubeconfig, gobin, cgroup, recording);
        /// all when absent.
        target: Option<String>,
    },
    /// Long-run check (needs root): drainwatch under mixed load while the
    /// lab's apiserver stand-in is restarted over and over; samples the
    /// daemon's RSS, fds, BPF map occupancy and engine sizes and fails on
    /// growth. Markdown and JSON in target/soak/.
    Soak {
        /// Length of the run (after start-up), minutes.
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
        /// SIGTERM to the stand-in every this many seconds of it being up.
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        restart_every: u64,
        /// How long the stand-in stays down between restarts, seconds.
        #[arg(long, value_name = "SECS", default_value_t = 5)]
        down: u64,
        /// Seconds between samples.
        #[arg(long, value_name = "SECS", default_value_t = 10)]
        sample_every: u64,
        /// Connections per churn burst (a burst every 30 s).
        #[arg(long, default_value_t = 2000)]
        churn: u64,
    },
    /// Benchmarks that print figures (needs root): `bench wire`.
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// The TC classifier's cost per packet (watched and unwatched ports) and
    /// veth throughput with and without it.
    Wire {
        /// Interleaved rounds.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Seconds per iperf3 stream.
        #[arg(long, default_value_t = 4)]
        seconds: u32,
    },
    /// drainwatch against tcpdump, bpftrace and bcc's tcpstates/tcplife on
    /// the same bounded load (churn, 1-byte rr, bulk; veth and loopback):
    /// rate, p99, CPU and BPF time per connection, events delivered and lost,
    /// RSS and map memory. Markdown and JSON in target/bench/.
    Compare {
        /// Interleaved rounds.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Seconds per workload and configuration.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// An earlier build of `drainwatch` to run in the same rounds as this
        /// one (rows "C1b baseline build"): a regression check.
        #[arg(long, value_name = "BIN")]
        baseline: Option<PathBuf>,
        /// Fixed offered load instead of saturation: new connections per
        /// second (each with a 1-byte request and response), one workload
        /// per rate, e.g. `2000,10000`; whole-machine CPU from /proc/stat
        /// against no observer, per connection and per request
        /// (target/bench/compare-fixed.md).
        #[arg(long, value_name = "CONN_PER_S", value_delimiter = ',')]
        fixed_rate: Vec<f64>,
        /// With --fixed-rate: 1-byte requests per second on kept
        /// connections (0: none).
        #[arg(long, value_name = "REQ_PER_S", default_value_t = 10_000.0)]
        rr_rate: f64,
    },
    /// The hot path's per-unit costs under one fixed connection rate, this
    /// build against `--baseline` in interleaved rounds: ns per run of
    /// `inet_sock_set_state` and of the TC classifier on real packets, and
    /// the daemon's CPU per event (target/bench/hotpath.md).
    Hotpath {
        /// Interleaved rounds.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Seconds of load per round and build.
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
        /// New connections per second.
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
        /// An earlier build of `drainwatch` to measure in the same rounds.
        #[arg(long, value_name = "BIN")]
        baseline: Option<PathBuf>,
    },
    /// drainwatch at apiserver scale: many long-lived, mostly idle
    /// connections to the watched port from several client namespaces,
    /// with churn and a burst of resets: map memory, RSS, CPU, flow-table
    /// evictions, events lost, time per flow-table walk
    /// (target/bench/scale.md).
    Scale {
        /// Connections held at once.
        #[arg(long, default_value_t = 100_000)]
        connections: u64,
        /// Client namespaces (one source address and one server process
        /// each).
        #[arg(long, default_value_t = 8)]
        clients: u32,
        /// New connections per second while opening them.
        #[arg(long, default_value_t = 4000.0)]
        open_rate: f64,
        /// Seconds they stay open once all are open.
        #[arg(long, default_value_t = 40.0)]
        hold_seconds: f64,
        /// Seconds between a held connection's 1-byte exchanges.
        #[arg(long, default_value_t = 30.0)]
        ping_seconds: f64,
        /// New connections per second while they are held.
        #[arg(long, default_value_t = 200.0)]
        churn_rate: f64,
        /// Fraction of the held connections reset at once at the end.
        #[arg(long, default_value_t = 0.1)]
        reset_fraction: f64,
        /// The daemon's `--flow-table` (default: its own default).
        #[arg(long)]
        flow_table: Option<u32>,
        /// The daemon's `--ringbuf-bytes` (default: its own default).
        #[arg(long)]
        ringbuf_bytes: Option<u32>,
    },
    /// Loss accounting and recovery under stress: a burst of connections,
    /// the daemon SIGSTOPped for 5 s under load, daemon and load on one CPU.
    Stress {
        /// Connections in the burst (and per case).
        #[arg(long, default_value_t = 200_000)]
        burst: u64,
    },
    /// What the Go HTTP/2 uprobes cost a TLS HTTP/2 server (Go 1.24, x/net):
    /// h2load's request rate with no GOAWAY, and Go clients getting a GOAWAY
    /// per request, with and without drainwatch in interleaved rounds;
    /// kernel time per hook run (target/bench/goh2.md).
    Goh2 {
        /// Interleaved rounds.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Seconds per load and configuration.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
    },
}

/// Debian packages the tests drive for real: every one of them, so that no
/// test skips on a fresh machine (kubectl comes with the machine image;
/// Debian's kubernetes-client would collide with it). `prometheus` is for
/// promtool (the alert rules), `chromium` for the report's screenshot test,
/// `python3-kubernetes` for the lab's Python clients, `tshark` to decrypt
/// the Go TLS tests' captures (ground truth for HTTP/2 frames inside TLS).
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "curl",
    "tcpdump",
    "haproxy",
    "nginx",
    "procps",
    "python3-kubernetes",
    "prometheus",
    "chromium",
    "nghttp2-server",
    "nghttp2-client",
    "apache2-bin",
    "tshark",
];
/// Extra Debian packages the benchmarks drive.
const BENCH_PACKAGES: &[&str] = &["iperf3", "bpftrace", "bpfcc-tools", "nghttp2-client"];

/// Installs the Debian packages of `packages` that are missing (as root;
/// otherwise says what `what` needs and how to get it).
fn apt_install(packages: &[&str], what: &str) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f", "${Status}", p])
                .output()
                .map(|o| {
                    o.status.success() && String::from_utf8_lossy(&o.stdout).ends_with(" installed")
                })
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{what} need these Debian packages: {}; run `sudo apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    // --no-remove: installing must never take away what the machine had.
    // qemu-system-x86 from the release once removed the image's newer
    // qemu-utils (from backports: the two share qemu-system-common's
    // version). apt then fails instead, and the packages are looked for in
    // the release's backports too, from a private source list, so the
    // versions can match without touching the host's apt set-up.
    let install = |extra: &[String]| {
        run(Command::new("apt-get")
            .args(extra)
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "--no-remove",
            ])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    let Err(first) = install(&[]) else {
        return Ok(());
    };
    let Some(backports) = backports_apt_options()? else {
        return Err(first);
    };
    eprintln!(
        "xtask: {first:#}: it would remove installed packages; trying the release's backports"
    );
    run(Command::new("apt-get")
        .args(&backports)
        .args(["update", "-qq"]))?;
    let mut with_target = backports.clone();
    with_target.push("-t".into());
    with_target.push(format!("{}-backports", os_codename().unwrap_or_default()));
    install(&with_target).with_context(|| {
        format!(
            "installing {} would remove packages this machine has, from the release and from its backports (apt-get install --no-remove)",
            missing.join(" ")
        )
    })
}

/// The release's codename (`bookworm`), from /etc/os-release.
fn os_codename() -> Option<String> {
    std::fs::read_to_string("/etc/os-release")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .filter(|c| !c.is_empty())
}

/// apt options for a private source list: the host's sources plus the
/// release's backports, with its own state and cache under target/apt, so
/// the host's sources and lists stay as they are. `None` when the release
/// or its Debian mirror cannot be told.
fn backports_apt_options() -> anyhow::Result<Option<Vec<String>>> {
    let Some(codename) = os_codename() else {
        return Ok(None);
    };
    let sources = [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .collect::<Vec<_>>()
    .join("\n");
    let Some(mirror) = debian_mirror(&sources) else {
        return Ok(None);
    };
    let dir = env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root_dir().join("target"))
        .join("apt");
    let parts = dir.join("sources.list.d");
    std::fs::create_dir_all(dir.join("lists/partial"))?;
    std::fs::create_dir_all(dir.join("cache/archives/partial"))?;
    std::fs::create_dir_all(&parts)?;
    for entry in std::fs::read_dir("/etc/apt/sources.list.d")? {
        let path = entry?.path();
        if path
            .extension()
            .is_some_and(|e| e == "sources" || e == "list")
            && let Some(name) = path.file_name()
        {
            std::fs::copy(&path, parts.join(name))?;
        }
    }
    let list = dir.join("sources.list");
    let host_list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    std::fs::write(
        &list,
        format!(
            "{host_list}\ndeb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {codename}-backports main\n"
        ),
    )?;
    Ok(Some(
        [
            format!("Dir::Etc::sourcelist={}", list.display()),
            format!("Dir::Etc::sourceparts={}", parts.display()),
            format!("Dir::State::Lists={}", dir.join("lists").display()),
            format!("Dir::Cache={}", dir.join("cache").display()),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect(),
    ))
}

/// The Debian archive the host's sources name (`URIs:` in deb822, or a
/// `deb URL suite` line), not the security archive.
fn debian_mirror(sources: &str) -> Option<String> {
    sources.lines().find_map(|l| {
        let l = l.trim();
        let url = l
            .strip_prefix("URIs:")
            .map(str::trim)
            .or_else(|| {
                l.strip_prefix("deb ")
                    .and_then(|r| r.split_whitespace().find(|w| w.contains("://")))
            })?
            .split_whitespace()
            .next()?;
        (url.trim_end_matches('/').ends_with("/debian")).then(|| url.to_string())
    })
}

/// For the benchmarks: root, the packages they drive, and the release
/// daemon and lab binaries (daemon, lab, target dir).
fn bench_binaries(packages: &[&str]) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    if !is_root() {
        bail!("the benchmarks create network namespaces and load eBPF programs: run as root");
    }
    setup_with(true, packages)?;
    let bin = build_daemon(true)?;
    run(cargo()
        .current_dir(root_dir())
        .args(["build", "--release", "-p", "drainwatch-lab"]))?;
    let target = env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root_dir().join("target"));
    let lab = target.join("release").join("drainwatch-lab");
    Ok((bin, lab, target))
}

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The rustup proxy, not `$CARGO`: `+nightly` only works through the proxy.
fn cargo() -> Command {
    Command::new("cargo")
}

fn setup(apt: bool) -> anyhow::Result<()> {
    setup_with(apt, APT_PACKAGES)
}

fn setup_with(apt: bool, packages: &[&str]) -> anyhow::Result<()> {
    // rust-src: needed for -Z build-std=core on bpfel-unknown-none.
    let has_src = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("rust-src"))
        .unwrap_or(false);
    if !has_src {
        eprintln!("xtask: installing rust-src for the nightly toolchain");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let cargo_bin = env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env::var("HOME").unwrap_or_default()).join(".cargo"))
        .join("bin");
    if !have("bpf-linker") && !cargo_bin.join("bpf-linker").exists() {
        install_bpf_linker()?;
    }
    if apt {
        apt_install(packages, "the tests")?;
    }
    Ok(())
}

/// bpf-linker built against the nightly toolchain's own libLLVM, so the LLVM
/// version always matches the rustc that emits the bitcode and no system
/// LLVM is needed.
fn install_bpf_linker() -> anyhow::Result<()> {
    eprintln!("xtask: installing bpf-linker (about a minute)");
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("rustc +nightly --print sysroot")?;
    let sysroot = String::from_utf8(out.stdout)
        .context("nightly sysroot is not UTF-8")?
        .trim()
        .to_string();
    let lib = Path::new(&sysroot).join("lib");
    let libllvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so") || n.starts_with("libLLVM-"))
        })
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;
    let major = llvm_major(&libllvm)?;
    let rustflags = format!(
        "-C link-arg=-Wl,-rpath,{} -C link-arg={}",
        lib.display(),
        libllvm.display()
    );
    run(cargo()
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major},no-llvm-linking")])
        .env("RUSTFLAGS", rustflags)
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN"))
}

fn llvm_major(libllvm: &Path) -> anyhow::Result<u32> {
    let out = Command::new("rustc")
        .args(["+nightly", "--version", "--verbose"])
        .output()
        .context("rustc +nightly --version --verbose")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot tell the LLVM version of {}", libllvm.display()))
}

fn build_daemon(release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.current_dir(root_dir())
        .args(["build", "-p", "probe-user"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let target = env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root_dir().join("target"));
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("drainwatch"))
}

fn as_root(program: &Path, args: &[String]) -> Command {
    if is_root() {
        let mut c = Command::new(program);
        c.args(args);
        c
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(program).args(args);
        c
    }
}

fn lint() -> anyhow::Result<()> {
    let root = root_dir();
    run(cargo().current_dir(&root).args(["fmt", "--all", "--check"]))?;
    run(cargo()
        .current_dir(root.join("probe-ebpf"))
        .args(["+nightly", "fmt", "--check"])
        .env_remove("RUSTUP_TOOLCHAIN"))?;
    // The fuzz targets are their own workspace (nightly): `--all` misses them.
    run(cargo()
        .current_dir(root.join("fuzz"))
        .args(["+nightly", "fmt", "--check"])
        .env_remove("RUSTUP_TOOLCHAIN"))?;
    run(cargo()
        .current_dir(&root)
        .args([
            "clippy",
            "--workspace",
            "--exclude",
            "probe-ebpf",
            "--all-targets",
            "--",
        ])
        .args(["-D", "warnings"]))?;
    run(cargo()
        .current_dir(root.join("probe-ebpf"))
        .args([
            "+nightly",
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--", "-D", "warnings"])
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup { no_apt } => setup(!no_apt),
        Cmd::Run { release, args } => {
            setup(false)?;
            let bin = build_daemon(release)?;
            let mut full = vec!["run".to_string()];
            full.extend(args);
            run(&mut as_root(&bin, &full))
        }
        Cmd::Bench {
            which: BenchCmd::Wire { rounds, seconds },
        } => {
            if !is_root() {
                bail!(
                    "the benchmarks create network namespaces and load eBPF programs: run as root"
                );
            }
            let all: Vec<&str> = APT_PACKAGES.iter().chain(BENCH_PACKAGES).copied().collect();
            setup_with(true, &all)?;
            let bin = build_daemon(true)?;
            bench::wire(&bin, rounds.max(1), seconds.clamp(1, 30))
        }
        Cmd::Bench {
            which:
                BenchCmd::Compare {
                    rounds,
                    seconds,
                    baseline,
                    fixed_rate,
                    rr_rate,
                },
        } => {
            if let Some(b) = &baseline
                && !b.is_file()
            {
                bail!("--baseline {}: not a file", b.display());
            }
            if let Some(r) = fixed_rate
                .iter()
                .chain([&rr_rate])
                .find(|r| !(r.is_finite() && (0.0..=200_000.0).contains(*r)))
            {
                bail!("--fixed-rate/--rr-rate {r}: must be between 0 and 200000 per second");
            }
            let all: Vec<&str> = APT_PACKAGES.iter().chain(BENCH_PACKAGES).copied().collect();
            let (bin, lab, target) = bench_binaries(&all)?;
            if !fixed_rate.is_empty() {
                if baseline.is_some() {
                    bail!("--baseline is for the saturation comparison, not --fixed-rate");
                }
                let opts = fixedrate::Opts {
                    conn_rates: fixed_rate.into_iter().filter(|r| *r > 0.0).collect(),
                    rr_rate,
                    rounds: rounds.clamp(1, 20),
                    secs: seconds.clamp(0.5, 30.0),
                };
                return fixedrate::run(&bin, &lab, &opts, &target.join("bench"));
            }
            compare::compare(
                &bin,
                baseline.as_deref(),
                &lab,
                rounds.max(1),
                seconds.clamp(0.5, 30.0),
                &target.join("bench"),
            )
        }
        Cmd::Bench {
            which:
                BenchCmd::Scale {
                    connections,
                    clients,
                    open_rate,
                    hold_seconds,
                    ping_seconds,
                    churn_rate,
                    reset_fraction,
                    flow_table,
                    ringbuf_bytes,
                },
        } => {
            let rate_ok = |r: f64, lo: f64| r.is_finite() && (lo..=50_000.0).contains(&r);
            let valid = (1..=1_000_000).contains(&connections)
                && (1..=64).contains(&clients)
                && rate_ok(open_rate, 1.0)
                && rate_ok(churn_rate, 0.0)
                && hold_seconds.is_finite()
                && (10.0..=1800.0).contains(&hold_seconds)
                && ping_seconds.is_finite()
                && (0.0..=600.0).contains(&ping_seconds)
                && (0.0..=1.0).contains(&reset_fraction);
            if !valid {
                bail!(
                    "bench scale: --connections 1..=1000000, --clients 1..=64, --open-rate 1..=50000, --churn-rate 0..=50000, --hold-seconds 10..=1800, --ping-seconds 0..=600, --reset-fraction 0..=1"
                );
            }
            let (bin, lab, target) = bench_binaries(APT_PACKAGES)?;
            let opts = scale::Opts {
                connections,
                clients,
                open_rate,
                hold_seconds,
                ping_seconds,
                churn_rate,
                reset_fraction,
                flow_table,
                ringbuf_bytes,
            };
            scale::run(&bin, &lab, &opts, &target.join("bench"))
        }
        Cmd::Bench {
            which:
                BenchCmd::Hotpath {
                    rounds,
                    seconds,
                    rate,
                    baseline,
                },
        } => {
            if let Some(b) = &baseline
                && !b.is_file()
            {
                bail!("--baseline {}: not a file", b.display());
            }
            if !(rate.is_finite() && (100.0..=50_000.0).contains(&rate)) {
                bail!("--rate {rate}: between 100 and 50000 connections per second");
            }
            let (bin, lab, target) = bench_binaries(APT_PACKAGES)?;
            hotpath::run(
                &bin,
                &lab,
                &hotpath::Opts {
                    rounds: rounds.clamp(1, 50),
                    secs: seconds.clamp(1.0, 60.0),
                    rate,
                    baseline,
                },
                &target.join("bench"),
            )
        }
        Cmd::Bench {
            which: BenchCmd::Stress { burst },
        } => {
            let (bin, lab, target) = bench_binaries(APT_PACKAGES)?;
            compare::stress(&bin, &lab, burst.clamp(1, 1_000_000), &target.join("bench"))
        }
        Cmd::Bench {
            which: BenchCmd::Goh2 { rounds, seconds },
        } => {
            let all: Vec<&str> = APT_PACKAGES.iter().chain(BENCH_PACKAGES).copied().collect();
            let (bin, _lab, target) = bench_binaries(&all)?;
            let go = gofixtures::go_fixtures()?.join("go1.24-stripped/h2probe");
            goh2bench::goh2(
                &bin,
                &go,
                &target.join("bench"),
                rounds.clamp(1, 20),
                seconds.clamp(1, 60),
            )
        }
        Cmd::Soak {
            minutes,
            restart_every,
            down,
            sample_every,
            churn,
        } => {
            if !(minutes.is_finite() && (0.5..=24.0 * 60.0).contains(&minutes)) {
                bail!("--minutes {minutes}: must be between 0.5 and 1440");
            }
            let (bin, lab, target) = bench_binaries(APT_PACKAGES)?;
            let opts = soak::Opts {
                minutes,
                restart_every: std::time::Duration::from_secs(restart_every.clamp(10, 3600)),
                down: std::time::Duration::from_secs(down.clamp(1, 300)),
                sample_every: std::time::Duration::from_secs(sample_every.clamp(1, 600)),
                churn: churn.clamp(1, 1_000_000),
            };
            soak::soak(&bin, &lab, &opts, &soak::out_dir(&target))
        }
        Cmd::Lab { what, args } => {
            setup(true)?;
            run(cargo()
                .current_dir(root_dir())
                .args(["build", "-p", "drainwatch-lab"]))?;
            let target = env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| root_dir().join("target"));
            let bin = target.join("debug").join("drainwatch-lab");
            let mut full: Vec<String> = match what.as_str() {
                "clean" | "list" => vec![what],
                _ => vec![
                    "run".into(),
                    what,
                    "--out".into(),
                    target.join("lab").display().to_string(),
                ],
            };
            if matches!(full.get(1).map(String::as_str), Some("goaway-tls" | "all")) {
                // The Go apiserver stand-in, built with Debian's Go 1.24 and
                // stripped like a release binary.
                let go = gofixtures::go_fixtures()?;
                full.push("--go-standin".into());
                full.push(go.join("go1.24-stripped/h2probe").display().to_string());
            }
            full.extend(args);
            run(&mut as_root(&bin, &full))
        }
        Cmd::VmTest => vmtest::vm_test(),
        Cmd::GoFixtures => gofixtures::go_fixtures().map(|d| {
            eprintln!("xtask: Go fixtures in {}", d.display());
        }),
        Cmd::Fuzz { seconds, target } => fuzz::fuzz(seconds.max(1), target.as_deref()),
        Cmd::Lint => {
            setup(false)?;
            lint()
        }
        Cmd::Test {
            no_lint,
            repeat,
            only,
            args,
        } => {
            setup(true)?;
            if !no_lint {
                lint()?;
            }
            if let Some(rounds) = repeat {
                if !is_root() {
                    bail!("--repeat needs root: a skipped test would count as a pass");
                }
                let target = env::var("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|_| root_dir().join("target"));
                // The Go uprobe tests' programs (built once, then reused).
                gofixtures::go_fixtures()?;
                return repeat::repeat(&root_dir(), &target, rounds.max(1), &only, &args);
            }
            if !is_root() {
                eprintln!(
                    "xtask: not root: the kernel tests will skip (each says why); run `sudo -E cargo xtask test` for the full suite"
                );
            }
            // The Go uprobe tests' programs, built with three Go releases.
            let go = gofixtures::go_fixtures()?;
            let mut test = cargo();
            test.env("DRAINWATCH_GO_FIXTURES", &go);
            test.current_dir(root_dir())
                .args(["test", "--workspace", "--exclude", "probe-ebpf"])
                .args(&args);
            if is_root() {
                // Root, with every package installed above: a test that
                // would skip (no root, a tool missing) fails instead.
                test.env("DRAINWATCH_NO_SKIP", "1");
            }
            run(&mut test)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::debian_mirror;

    #[test]
    fn debian_mirror_from_either_source_format() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\nTypes: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n";
        assert_eq!(
            debian_mirror(deb822).as_deref(),
            Some("http://mirror.example/debian")
        );
        let one_line = "# comment\ndeb [arch=amd64] http://mirror.example/debian/ bookworm main\n";
        assert_eq!(
            debian_mirror(one_line).as_deref(),
            Some("http://mirror.example/debian/")
        );
        assert_eq!(
            debian_mirror("deb http://elsewhere.example/ubuntu jammy main"),
            None
        );
    }
}
