//! `drainwatch-lab`: runs the rollout scenarios, and is also every process the lab starts
//! inside its namespaces (apiserver stand-in, load generator, timer server and client).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use drainwatch_lab::apiserver::{self, ShutdownMode};
use drainwatch_lab::clock::parse_duration;
use drainwatch_lab::loadgen::{self, LoadConfig};
use drainwatch_lab::scenario::{self, RunOpts, Scenario};
use drainwatch_lab::{cmd, timer, topo};

#[derive(Parser)]
#[command(
    name = "drainwatch-lab",
    about = "Apiserver rollout failure scenarios, reproduced in network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario (or `all`) and print its timeline.
    Run {
        /// Scenario name, or `all`.
        scenario: String,
        /// Output directory for truth.json, timeline.txt, pcaps and records.
        #[arg(long, default_value = "target/lab")]
        out: PathBuf,
        /// Multiply every real-world duration by this (default per scenario: 0.1, azure 1/60).
        #[arg(long)]
        time_scale: Option<f64>,
        /// Skip tcpdump.
        #[arg(long)]
        no_capture: bool,
        #[command(flatten)]
        overrides: scenario::Overrides,
        /// Hold for an observer: write OUT/<scenario>/topology.json once the hosts
        /// exist, then wait until FILE exists before starting any server; at the
        /// end, write OUT/<scenario>/scenario-done and wait until FILE is removed
        /// (the observer stopped) before tearing down.
        #[arg(long, value_name = "FILE")]
        hold_for: Option<PathBuf>,
        /// The Go stand-in for goaway-tls: `h2probe` as `cargo xtask go-fixtures`
        /// builds it (default: Go 1.24's stripped build under
        /// $DRAINWATCH_GO_FIXTURES).
        #[arg(long, value_name = "PATH")]
        go_standin: Option<PathBuf>,
    },
    /// List the scenarios.
    List,
    /// Remove every namespace (and the processes, interfaces and nft tables in it) that
    /// any lab run left behind.
    Clean,
    /// The apiserver stand-in.
    Apiserver {
        /// Instance name.
        #[arg(long, default_value = "m1")]
        name: String,
        /// HTTPS listen address.
        #[arg(long, default_value = "0.0.0.0:6443")]
        listen: SocketAddr,
        /// Cleartext HTTP/1.1 + h2c listen address.
        #[arg(long)]
        h2c_listen: Option<SocketAddr>,
        /// Directory of ca.crt / apiserver.crt / apiserver.key (generated if missing).
        #[arg(long)]
        tls_dir: PathBuf,
        /// Extra subject alternative names for a generated certificate.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// shutdown-delay-duration.
        #[arg(long, value_parser = parse_duration, default_value = "70s")]
        shutdown_delay: Duration,
        /// Time in-flight requests get after the listener closed.
        #[arg(long, value_parser = parse_duration, default_value = "60s")]
        request_timeout: Duration,
        /// Time from listening to ready.
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        startup_delay: Duration,
        /// Reaction to SIGTERM.
        #[arg(long, value_enum, default_value = "graceful")]
        mode: ShutdownMode,
        /// Lifecycle record file (JSON lines).
        #[arg(long)]
        truth: PathBuf,
        /// Required bearer token for API calls.
        #[arg(long)]
        token: Option<String>,
        /// Another master's name, whose apiserver pod this one serves too (repeatable).
        #[arg(long = "peer")]
        peers: Vec<String>,
        /// An endpoint published in the `kubernetes` Service's EndpointSlice, as
        /// kube-apiserver publishes --advertise-address:--secure-port (repeatable;
        /// default: the HTTPS listen address).
        #[arg(long = "advertise", value_name = "ADDR:PORT")]
        endpoints: Vec<SocketAddr>,
    },
    /// The bounded load generator.
    Loadgen(LoadConfig),
    /// The benchmarks' server (churn, request/response, bulk) until killed.
    BenchServer {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// The benchmarks' bounded load generator: one JSON result line.
    BenchLoad(drainwatch_lab::benchload::LoadArgs),
    /// A timer server: writes the time on each connection every PERIOD, keepalive off.
    TimerServer {
        /// `ADDR=PERIOD`, e.g. `0.0.0.0:8600=600s`; repeatable.
        #[arg(long = "port", required = true)]
        ports: Vec<String>,
        /// Run time.
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
        /// Record file.
        #[arg(long)]
        out: PathBuf,
    },
    /// The idle-reset middlebox (Azure LB's TCP reset on idle), run in a router's
    /// namespace: RSTs to both ends of every flow idle for `--idle`.
    IdleResetBox(drainwatch_lab::idlereset::BoxConfig),
    /// A long-lived client of the timer server.
    TimerClient {
        /// Client name.
        #[arg(long)]
        name: String,
        /// Server address.
        #[arg(long)]
        connect: SocketAddr,
        /// TCP keepalive idle/interval (off when absent).
        #[arg(long, value_parser = parse_duration)]
        keepalive: Option<Duration>,
        /// Run time.
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
        /// Record file.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::List => {
            for s in Scenario::ALL {
                println!("{}", s.name());
            }
        }
        Cmd::Clean => {
            need_root()?;
            let removed = topo::clean().context("cleaning lab namespaces")?;
            println!("removed {} lab namespace(s)", removed.len());
            for n in removed {
                println!("  {n}");
            }
            let cgroups = scenario::clean_cgroups().context("cleaning lab pod cgroups")?;
            println!("removed {} lab cgroup subtree(s)", cgroups.len());
            for c in cgroups {
                println!("  {}", c.display());
            }
        }
        Cmd::Run {
            scenario,
            out,
            time_scale,
            no_capture,
            overrides,
            hold_for,
            go_standin,
        } => {
            need_root()?;
            let list: Vec<Scenario> = if scenario == "all" {
                Scenario::ALL.to_vec()
            } else {
                match Scenario::ALL.iter().find(|s| s.name() == scenario) {
                    Some(s) => vec![*s],
                    None => bail!(
                        "unknown scenario {scenario:?}; one of: all, {}",
                        Scenario::ALL.map(|s| s.name()).join(", ")
                    ),
                }
            };
            if let Some(ts) = time_scale
                && !(ts > 0.0 && ts <= 1.0)
            {
                bail!("--time-scale {ts}: must be in (0, 1]");
            }
            let bin = std::env::current_exe().context("locating this binary")?;
            for s in list {
                let dir = out.join(s.name());
                let started = std::time::Instant::now();
                let opts = RunOpts {
                    out: dir.clone(),
                    time_scale,
                    bin: bin.clone(),
                    capture: !no_capture,
                    overrides: overrides.clone(),
                    hold_for: hold_for.clone(),
                    go_standin: go_standin.clone().or_else(scenario::go_standin_from_env),
                };
                let truth = scenario::run(s, &opts)
                    .await
                    .with_context(|| format!("scenario {}", s.name()))?;
                print!("{}", truth.timeline());
                println!(
                    "{} done in {:.1}s; ground truth in {}",
                    s.name(),
                    started.elapsed().as_secs_f64(),
                    dir.join("truth.json").display()
                );
            }
        }
        Cmd::Apiserver {
            name,
            listen,
            h2c_listen,
            tls_dir,
            sans,
            shutdown_delay,
            request_timeout,
            startup_delay,
            mode,
            truth,
            token,
            peers,
            endpoints,
        } => {
            let mut all_sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            all_sans.extend(sans);
            apiserver::serve(apiserver::Config {
                name,
                listen,
                h2c_listen,
                tls_dir,
                sans: all_sans,
                shutdown_delay,
                request_timeout,
                startup_delay,
                mode,
                truth,
                token,
                peers,
                endpoints,
            })
            .await
            .context("apiserver stand-in")?;
        }
        Cmd::Loadgen(cfg) => loadgen::run(cfg).await.context("load generator")?,
        Cmd::BenchServer { listen } => drainwatch_lab::benchload::serve(listen)
            .await
            .with_context(|| format!("bench server on {listen}"))?,
        Cmd::BenchLoad(a) => {
            let r = drainwatch_lab::benchload::run(a).await?;
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::TimerServer {
            ports,
            duration,
            out,
        } => {
            let mut parsed = Vec::new();
            for p in ports {
                let (a, d) = p
                    .split_once('=')
                    .with_context(|| format!("--port {p:?}: expected ADDR=PERIOD"))?;
                let addr: SocketAddr = a
                    .parse()
                    .with_context(|| format!("--port {p:?}: bad address"))?;
                let period = parse_duration(d).map_err(anyhow::Error::msg)?;
                if period.is_zero() {
                    bail!("--port {p:?}: period must be positive");
                }
                parsed.push((addr, period));
            }
            timer::serve(parsed, duration, out)
                .await
                .context("timer server")?;
        }
        Cmd::IdleResetBox(cfg) => {
            let counts = tokio::task::spawn_blocking(move || drainwatch_lab::idlereset::run(&cfg))
                .await
                .context("idle-reset box thread")?
                .context("idle-reset box")?;
            println!("{}", serde_json::to_string(&counts)?);
        }
        Cmd::TimerClient {
            name,
            connect,
            keepalive,
            duration,
            out,
        } => timer::client(name, connect, keepalive, duration, out)
            .await
            .context("timer client")?,
    }
    Ok(())
}

fn need_root() -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the lab creates network namespaces and needs root (run with sudo)");
    }
    Ok(())
}
