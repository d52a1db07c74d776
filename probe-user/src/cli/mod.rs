//! The command line: one file per subcommand, each owning its arguments;
//! this one parses, sets up logging and dispatches.

mod analyze;
mod bench;
mod check;
mod cluster;
pub mod config;
mod run;
pub mod selftest;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "drainwatch", version, about)]
struct Cli {
    /// Log filter for drainwatch's own logs (tracing EnvFilter syntax).
    #[arg(long, global = true, env = "DRAINWATCH_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the observer: load the kernel programs, print events, serve metrics.
    Run(Box<run::RunArgs>),
    /// Check an LB's health-check timing against the apiserver's shutdown
    /// sequence: the LB must take the backend out before the listener closes.
    LbCheck(drainwatch_ops::lb_check::LbCheckArgs),
    /// Audit Kubernetes manifests for graceful-shutdown problems (grace period,
    /// preStop, drain window per consumer model: Service or LB health check).
    Audit(drainwatch_ops::audit::AuditArgs),
    /// Correlate a recording (`run --record FILE`) or a tcpdump capture
    /// (`--pcap FILE`) offline: the same engine as live.
    Analyze(analyze::AnalyzeArgs),
    /// One self-contained HTML report (SVG timeline) from a recording, a
    /// capture, or a running daemon's API (`report http://127.0.0.1:9977`).
    Report(drainwatch_ops::report::ReportArgs),
    /// Every master's rollout on one time axis, from every drainwatch pod's
    /// API through the Kubernetes API (also `kubectl drainwatch ...`).
    Cluster(cluster::ClusterArgs),
    /// Load every kernel program as `run` does, drive loopback TCP on a
    /// watched port and check the exact events (as root; used by `cargo
    /// xtask vm-test`). Prints one JSON line per check, `INSNS` lines and
    /// `SELFTEST PASS` or `SELFTEST FAIL <reason>`; exits 0 only on pass.
    Selftest(selftest::SelftestArgs),
    /// Time the TC classifier on crafted packets (used by `cargo xtask bench wire`).
    #[command(hide = true)]
    BenchClassifier {
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
    },
}

/// The name kubectl runs its plugin by: `kubectl drainwatch ARGS` execs
/// `kubectl-drainwatch ARGS` from PATH.
const KUBECTL_PLUGIN: &str = "kubectl-drainwatch";

/// The command line, with `cluster` put first when run as the kubectl
/// plugin (a link named `kubectl-drainwatch`), so `kubectl drainwatch
/// timeline` is `drainwatch cluster timeline`.
fn args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let plugin = args.first().is_some_and(|a0| {
        std::path::Path::new(a0).file_name() == Some(std::ffi::OsStr::new(KUBECTL_PLUGIN))
    });
    if plugin {
        args.insert(1, "cluster".into());
    }
    args
}

/// The `drainwatch` binary.
pub fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches_from(args());
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let (Command::Run(args), Some(("run", m))) = (&mut cli.command, matches.subcommand())
        && let Err(e) = run::apply_config_file(args, m)
    {
        eprintln!("drainwatch: {e}");
        return ExitCode::from(2);
    }
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("drainwatch: --log {:?} is not a valid filter: {e}", cli.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::LbCheck(args) => drainwatch_ops::lb_check::run(&args),
        Command::Audit(args) => drainwatch_ops::audit::run(&args),
        Command::Analyze(args) => analyze::analyze(&args),
        Command::Report(args) if cluster::is_api_url(&args.input) => cluster::report_url(&args),
        Command::Report(args) => drainwatch_ops::report::run(&args),
        Command::Cluster(args) => cluster::run(&args),
        Command::Selftest(args) => Ok(selftest::run(&args)),
        Command::BenchClassifier { repeat } => {
            bench::run(repeat.max(1)).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drainwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
