//! `drainwatch run`: its arguments (flags, environment, config file) and
//! turning them into the daemon's options.

use std::{net::SocketAddr, process::ExitCode};

use clap::Args;
use probe_common::{DEFAULT_PORTS, DEFAULT_RINGBUF_BYTES};

use crate::{
    cli::check::check,
    cli::config,
    daemon::{self, RunOptions},
    decode::observe,
    kernel::{
        iface, leftovers,
        load::{self as loader, LoadOptions},
        procscan,
    },
    pipeline::Output,
    sources::{endpoints, http as httpcheck, kubeconfig, kubewatch},
};

#[derive(Args)]
pub struct RunArgs {
    /// A TCP port to watch, matched on either end (repeatable). Default: 6443 and 443.
    #[arg(long = "port", value_name = "PORT", env = "DRAINWATCH_PORT", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    ports: Vec<u16>,
    /// Watch the apiserver as these endpoints only, not every connection on
    /// their ports (a node that is the apiserver's client: a worker of a
    /// managed cluster): HOST:PORT or [IPv6]:PORT, names resolved at start
    /// and again every 30 s (repeatable). `auto`: the kubernetes Service of
    /// the pod drainwatch runs in, the server of the kubeconfig in use, and
    /// the ready endpoints of the kubernetes Service's EndpointSlices (where
    /// kube-proxy sends its packets; read with the pod watcher's
    /// credentials, listed again every 30 s). Their ports are the watched
    /// ports unless --port is given too.
    #[arg(
        long = "apiserver-endpoint",
        value_name = "HOST:PORT|auto",
        env = "DRAINWATCH_APISERVER_ENDPOINT",
        value_delimiter = ','
    )]
    apiserver_endpoints: Vec<String>,
    /// How to print events on stdout.
    #[arg(long, value_enum, env = "DRAINWATCH_OUTPUT", default_value = "text")]
    output: Output,
    /// Where to serve Prometheus metrics (loopback unless told otherwise):
    /// `IP:PORT`, `[IPv6]:PORT`, or a bare IP for port 9977.
    #[arg(long, env = "DRAINWATCH_METRICS_ADDR", default_value = "127.0.0.1:9977", value_parser = parse_metrics_addr)]
    metrics_addr: SocketAddr,
    /// Size of the kernel event ring buffer in bytes: a power of two, at least 4096.
    #[arg(long, env = "DRAINWATCH_RINGBUF_BYTES", default_value_t = DEFAULT_RINGBUF_BYTES, value_parser = parse_ringbuf_bytes)]
    ringbuf_bytes: u32,
    /// Kernel-side diagnostics level (off, error, warn, info, debug, trace).
    #[arg(long, env = "DRAINWATCH_KERNEL_LOG_LEVEL", default_value = "warn", value_parser = parse_kernel_level)]
    kernel_log_level: u8,
    /// Do not try the kprobe path even where the kernel has kprobes.
    #[arg(long, env = "DRAINWATCH_NO_KPROBES")]
    no_kprobes: bool,
    /// An interface for the wire observer (repeatable). Default: lo and
    /// every interface that is up with an address.
    #[arg(
        long = "iface",
        value_name = "NAME",
        env = "DRAINWATCH_IFACE",
        value_delimiter = ','
    )]
    ifaces: Vec<String>,
    /// Do not attach the wire observer (TC classifier).
    #[arg(long, env = "DRAINWATCH_NO_WIRE")]
    no_wire: bool,
    /// How the wire observer's TC classifier is attached: `auto` uses TCX
    /// links where the kernel has them (6.6+) and a clsact qdisc with a
    /// netlink filter otherwise; `tcx` or `netlink` force one.
    #[arg(long, value_enum, env = "DRAINWATCH_TC_ATTACH", default_value = "auto")]
    tc_attach: loader::TcAttach,
    /// Where drainwatch notes the TC filters and qdiscs it adds, so that the
    /// next start removes what a killed instance left.
    #[arg(long, value_name = "DIR", env = "DRAINWATCH_STATE_DIR", default_value = leftovers::DEFAULT_STATE_DIR)]
    state_dir: std::path::PathBuf,
    /// Flows the wire observer tracks at once (least recently used evicted).
    #[arg(long, env = "DRAINWATCH_FLOW_TABLE", default_value_t = probe_common::DEFAULT_FLOW_TABLE, value_parser = clap::value_parser!(u32).range(FLOW_TABLE_MIN..=FLOW_TABLE_MAX))]
    flow_table: u32,
    /// Sockets on watched ports the connection tracepoints track at once
    /// (96 bytes each). When full, a new socket is not tracked (counted in
    /// drainwatch_socket_table_full_total); tracked ones are never evicted.
    #[arg(long, env = "DRAINWATCH_SOCKET_TABLE", default_value_t = probe_common::DEFAULT_SOCK_TABLE, value_parser = clap::value_parser!(u32).range(FLOW_TABLE_MIN..=FLOW_TABLE_MAX))]
    socket_table: u32,
    /// A process name whose signals and exit are reported, besides the owners
    /// of watched listeners (repeatable, at most 4, 15 characters each).
    #[arg(long = "watch-comm", value_name = "NAME", env = "DRAINWATCH_WATCH_COMM", value_delimiter = ',', default_value = "kube-apiserver", value_parser = parse_comm)]
    watch_comms: Vec<String>,
    /// Do not hook Go programs' HTTP/2 code (GOAWAY and refused streams
    /// inside TLS, from uprobes).
    #[arg(long, env = "DRAINWATCH_NO_GO_UPROBES")]
    no_go_uprobes: bool,
    /// A Go client's process name whose HTTP/2 code is hooked (repeatable),
    /// besides the watched names, the owners of watched listeners and every
    /// process seen opening a connection on a watched port.
    #[arg(long = "go-client", value_name = "NAME", env = "DRAINWATCH_GO_CLIENT", value_delimiter = ',', value_parser = parse_comm)]
    go_clients: Vec<String>,
    /// Report only one network namespace: `self` (the daemon's, e.g. the host
    /// network of a hostNetwork pod), a path such as /run/netns/NAME or
    /// /proc/PID/ns/net, or `all`.
    #[arg(long, default_value = "all", env = "DRAINWATCH_NETNS")]
    netns: String,
    /// Turn on the kernel's per-program run-time statistics while running and
    /// export them (drainwatch_program_run_seconds_total); costs ~20 ns per run.
    #[arg(long, env = "DRAINWATCH_BPF_STATS")]
    bpf_stats: bool,
    /// Print which hooks this host supports and which would be used, then exit.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    correlate: drainwatch_ops::pcap::CorrelateFlags,
    /// The local apiserver instance to poll directly for /readyz and /healthz
    /// (e.g. https://127.0.0.1:6443/).
    #[arg(long, value_name = "URL", env = "DRAINWATCH_APISERVER_URL", value_parser = parse_http_url)]
    apiserver_url: Option<hyper::Uri>,
    /// CA certificate(s) (PEM) to verify the apiserver and probe targets with.
    #[arg(long, value_name = "FILE", env = "DRAINWATCH_APISERVER_CA")]
    apiserver_ca: Option<std::path::PathBuf>,
    /// Do not verify TLS certificates of the apiserver and probe targets.
    #[arg(long, env = "DRAINWATCH_INSECURE_SKIP_TLS_VERIFY")]
    insecure_skip_tls_verify: bool,
    /// How often /readyz and /healthz are polled.
    #[arg(long, default_value = "1s", value_parser = parse_interval, env = "DRAINWATCH_READYZ_INTERVAL")]
    readyz_interval: std::time::Duration,
    /// A URL to probe continuously through the load balancer, as clients do
    /// (e.g. https://api-int.example:6443/readyz) (repeatable).
    #[arg(long = "probe-url", value_name = "URL", env = "DRAINWATCH_PROBE_URL", value_delimiter = ',', value_parser = parse_http_url)]
    probe_urls: Vec<hyper::Uri>,
    /// Probe the current cluster of this kubeconfig (e.g. the kubelet's,
    /// /etc/kubernetes/kubelet.conf): its server URL + /readyz, the way this
    /// node's clients reach the apiservers, trusted with its CA.
    #[arg(long, value_name = "FILE", env = "DRAINWATCH_PROBE_KUBECONFIG")]
    probe_kubeconfig: Option<std::path::PathBuf>,
    /// Probe on a new connection per request, on one reused connection, or both.
    #[arg(long, default_value = "both", value_parser = ["new", "reused", "both"], env = "DRAINWATCH_PROBE_MODE")]
    probe_mode: String,
    /// Time between probe requests, per target and mode (at least 50ms).
    #[arg(long, default_value = "500ms", value_parser = parse_interval, env = "DRAINWATCH_PROBE_INTERVAL")]
    probe_interval: std::time::Duration,
    /// Kubeconfig for watching the apiserver pods (e.g. the kubelet's);
    /// default: $KUBECONFIG, then ~/.kube/config, then the in-cluster
    /// service account when running in a pod (as kubectl chooses).
    #[arg(long, value_name = "FILE", env = "DRAINWATCH_KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
    /// Namespace of the apiserver pods (OpenShift: openshift-kube-apiserver).
    #[arg(long, default_value = "kube-system", env = "DRAINWATCH_POD_NAMESPACE")]
    pod_namespace: String,
    /// Label selector of the apiserver pods (OpenShift: app=openshift-kube-apiserver).
    #[arg(
        long,
        default_value = "component=kube-apiserver",
        env = "DRAINWATCH_POD_SELECTOR"
    )]
    pod_selector: String,
    /// Only this node's pods (the DaemonSet sets it from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// TCP keepalive on drainwatch's own connections to the apiserver (its
    /// Kubernetes clients and the prober): idle time before the first probe
    /// and between probes, in whole seconds, below any LB idle timeout on
    /// the way (Azure's: 4m). 0 turns it off. client-go's is 30s.
    #[arg(long, value_name = "DURATION", default_value = "30s", env = "DRAINWATCH_KUBE_KEEPALIVE", value_parser = parse_keepalive)]
    kube_keepalive: std::time::Duration,
    /// Do not use the Kubernetes API: no pod watch, no Events, and
    /// `--apiserver-endpoint auto` without the EndpointSlice.
    #[arg(long, env = "DRAINWATCH_NO_KUBE")]
    no_kube: bool,
    /// Do not write verdicts as Kubernetes Events (events.k8s.io/v1, with
    /// the pod watcher's credentials; --no-kube turns them off too).
    #[arg(long, env = "DRAINWATCH_NO_KUBE_EVENTS")]
    no_kube_events: bool,
    /// Record what the correlation engine sees (JSON lines) for `drainwatch analyze`.
    #[arg(long, value_name = "FILE", env = "DRAINWATCH_RECORD")]
    record: Option<std::path::PathBuf>,
    /// A TOML file whose keys are these flags' names; flags and DRAINWATCH_*
    /// variables override it.
    #[arg(long, env = "DRAINWATCH_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

/// Bounds of `--flow-table` and `--socket-table`.
const FLOW_TABLE_MIN: i64 = 16;
const FLOW_TABLE_MAX: i64 = 4_194_304;

/// The default metrics port, used when `--metrics-addr` is a bare IP (e.g. a
/// pod IP from the downward API, IPv4 or IPv6).
const METRICS_PORT: u16 = 9977;

fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    match s.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, METRICS_PORT)),
        Err(_) => Err(format!(
            "{s:?} is neither IP:PORT, [IPv6]:PORT nor a bare IP address"
        )),
    }
}

fn parse_http_url(s: &str) -> Result<hyper::Uri, String> {
    let u: hyper::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(u.scheme_str(), Some("http" | "https")) || u.host().is_none() {
        return Err(format!("{s:?}: expected http(s)://host[:port]/path"));
    }
    Ok(u)
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = drainwatch_ops::duration::parse_duration(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_millis(50) {
        return Err(format!(
            "{s:?} is shorter than 50ms: the probes are bounded in rate"
        ));
    }
    Ok(d)
}

/// 0, or whole seconds the kernel takes as `TCP_KEEPIDLE` (1 to 32767).
fn parse_keepalive(s: &str) -> Result<std::time::Duration, String> {
    let d = drainwatch_ops::duration::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() || (d.subsec_nanos() == 0 && (1..=32767).contains(&d.as_secs())) {
        Ok(d)
    } else {
        Err(format!(
            "{s:?}: 0 (off) or whole seconds from 1s to 32767s (the kernel's keepalive unit and limit)"
        ))
    }
}

fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{s:?}: a process name as the kernel keeps it (1 to 15 printable characters)"
        ));
    }
    Ok(s.to_string())
}

fn parse_ringbuf_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a byte count: {e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!(
            "{n} is not a power of two of at least 4096 (the kernel requires a power-of-two multiple of the page size)"
        ));
    }
    Ok(n)
}

fn parse_kernel_level(s: &str) -> Result<u8, String> {
    Ok(match s {
        "off" => 0,
        "error" => 1,
        "warn" => 2,
        "info" => 3,
        "debug" => 4,
        "trace" => 5,
        _ => {
            return Err(format!(
                "{s:?} is not one of off, error, warn, info, debug, trace"
            ));
        }
    })
}

/// Fills flags given neither on the command line nor in the environment
/// from the config file, validating each value with the flag's own parser.
pub fn apply_config_file(
    args: &mut RunArgs,
    m: &clap::ArgMatches,
) -> Result<(), config::ConfigError> {
    let Some(path) = args.config.clone() else {
        return Ok(());
    };
    let file = config::load(&path)?;
    let shown = path.display().to_string();
    let bad = |key: &'static str, message: String| config::ConfigError::Value {
        path: shown.clone(),
        key,
        message,
    };
    let unset = |id: &str| config::unset(m, id);
    if let Some(v) = file.port
        && unset("ports")
    {
        if v.contains(&0) {
            return Err(bad("port", "port 0 cannot be watched".into()));
        }
        args.ports = v;
    }
    if let Some(v) = file.output
        && unset("output")
    {
        args.output = <Output as clap::ValueEnum>::from_str(&v, false)
            .map_err(|_| bad("output", format!("{v:?} is not one of text, json, none")))?;
    }
    if let Some(v) = file.metrics_addr
        && unset("metrics_addr")
    {
        args.metrics_addr = parse_metrics_addr(&v).map_err(|e| bad("metrics-addr", e))?;
    }
    if let Some(v) = file.ringbuf_bytes
        && unset("ringbuf_bytes")
    {
        args.ringbuf_bytes =
            parse_ringbuf_bytes(&v.to_string()).map_err(|e| bad("ringbuf-bytes", e))?;
    }
    if let Some(v) = file.kernel_log_level
        && unset("kernel_log_level")
    {
        args.kernel_log_level = parse_kernel_level(&v).map_err(|e| bad("kernel-log-level", e))?;
    }
    if let Some(v) = file.flow_table
        && unset("flow_table")
    {
        args.flow_table = table_size(v).map_err(|e| bad("flow-table", e))?;
    }
    if let Some(v) = file.socket_table
        && unset("socket_table")
    {
        args.socket_table = table_size(v).map_err(|e| bad("socket-table", e))?;
    }
    if let Some(v) = file.iface
        && unset("ifaces")
    {
        args.ifaces = v;
    }
    if let Some(v) = file.netns
        && unset("netns")
    {
        args.netns = v;
    }
    if let Some(v) = file.apiserver_endpoint
        && unset("apiserver_endpoints")
    {
        args.apiserver_endpoints = endpoint_list(v).map_err(|e| bad("apiserver-endpoint", e))?;
    }
    if let Some(v) = file.watch_comm
        && unset("watch_comms")
    {
        args.watch_comms = comm_list(&v).map_err(|e| bad("watch-comm", e))?;
    }
    for (key, id, value, slot) in [
        (
            "no-kprobes",
            "no_kprobes",
            file.no_kprobes,
            &mut args.no_kprobes,
        ),
        ("no-wire", "no_wire", file.no_wire, &mut args.no_wire),
        (
            "bpf-stats",
            "bpf_stats",
            file.bpf_stats,
            &mut args.bpf_stats,
        ),
    ] {
        let _ = key;
        if let Some(v) = value
            && unset(id)
        {
            *slot = v;
        }
    }
    Ok(())
}

/// A `flow-table` or `socket-table` value from the config file.
fn table_size(v: u32) -> Result<u32, String> {
    if (FLOW_TABLE_MIN..=FLOW_TABLE_MAX).contains(&i64::from(v)) {
        Ok(v)
    } else {
        Err(format!(
            "{v} is outside {FLOW_TABLE_MIN}..={FLOW_TABLE_MAX}"
        ))
    }
}

/// `apiserver-endpoint` values from the config file, each checked as the
/// flag checks it (`auto` as is).
fn endpoint_list(v: Vec<String>) -> Result<Vec<String>, String> {
    for e in v.iter().filter(|e| e.trim() != "auto") {
        endpoints::parse(e, "apiserver-endpoint").map_err(|err| {
            let text = err.to_string();
            text.trim_start_matches("--apiserver-endpoint ").to_string()
        })?;
    }
    Ok(v)
}

/// `watch-comm` names from the config file: at most `WATCH_COMMS`.
fn comm_list(v: &[String]) -> Result<Vec<String>, String> {
    if v.len() > probe_common::WATCH_COMMS {
        return Err(format!("at most {} names", probe_common::WATCH_COMMS));
    }
    v.iter().map(|n| parse_comm(n)).collect()
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Before any Kubernetes client is built (the EndpointSlice is read while loading).
    kubewatch::set_keepalive((!args.kube_keepalive.is_zero()).then_some(args.kube_keepalive));
    let pods = pod_watch(&args);
    let load = load_options(&args)?;
    if args.check {
        return check(&load);
    }
    // The addresses of the host drainwatch observes: those of the --netns
    // namespace when it names one, else of the namespace it runs in.
    let local_addrs = match args.netns.as_str() {
        "all" | "self" => observe::local_addrs(),
        path => observe::local_addrs_in(std::path::Path::new(path))
            .map_err(|e| anyhow::anyhow!("--netns {path}: cannot read its addresses: {e}"))?,
    };
    let kube_events = kube_events(&args, pods.as_ref());
    // The pods of this node name the owners of its connections; the pod
    // watcher's credentials serve both.
    let node_pods = pods.as_ref().map(|p| {
        let node = args
            .node_name
            .clone()
            .or_else(observe::hostname)
            .unwrap_or_else(|| "unknown-node".into());
        (p.credentials.clone(), node)
    });
    let http = http_checks(&args, pods)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(daemon::run(RunOptions {
        load,
        output: args.output,
        metrics_addr: args.metrics_addr,
        bpf_stats: args.bpf_stats,
        correlate: args.correlate,
        local_addrs,
        record: args.record,
        http,
        kube_events,
        node_pods,
    }))?;
    Ok(ExitCode::SUCCESS)
}

/// What the loader needs: ports, sizes, hooks wanted, the wire observer's
/// interfaces (of the --netns namespace when it names one), the namespace
/// filter.
fn load_options(args: &RunArgs) -> anyhow::Result<LoadOptions> {
    let endpoints = endpoint_options(args)?;
    let mut ports = match (&endpoints, args.ports.is_empty()) {
        (Some(e), true) => e.specs.iter().map(|s| s.port).collect(),
        (_, true) => DEFAULT_PORTS.to_vec(),
        (_, false) => args.ports.clone(),
    };
    if let Some(e) = &endpoints {
        ports.extend(e.specs.iter().map(|s| s.port));
        // Where kube-proxy sends the Service's packets: its own ports.
        ports.extend(e.resolved.slice_ports());
    }
    ports.sort_unstable();
    ports.dedup();
    let netns = match args.netns.as_str() {
        "all" => None,
        other => {
            let path = if other == "self" {
                "/proc/self/ns/net"
            } else {
                other
            };
            Some(
                procscan::netns_inode(std::path::Path::new(path))
                    .map_err(|e| anyhow::anyhow!("--netns {other}: {e}"))?,
            )
        }
    };
    Ok(LoadOptions {
        ports,
        ringbuf_bytes: args.ringbuf_bytes,
        socket_table: args.socket_table,
        kernel_log_level: args.kernel_log_level,
        kprobes: !args.no_kprobes,
        wire: wire_options(args)?,
        watch_comms: args.watch_comms.clone(),
        netns,
        go_uprobes: !args.no_go_uprobes,
        go_clients: args.go_clients.clone(),
        endpoints,
    })
}

/// Endpoint mode's endpoints, resolved once now (the loader writes them
/// before any program runs), or `None` without `--apiserver-endpoint`.
fn endpoint_options(args: &RunArgs) -> anyhow::Result<Option<loader::EndpointOptions>> {
    if args.apiserver_endpoints.is_empty() {
        return Ok(None);
    }
    let service = match (
        std::env::var("KUBERNETES_SERVICE_HOST"),
        std::env::var("KUBERNETES_SERVICE_PORT"),
    ) {
        (Ok(h), Ok(p)) if !h.is_empty() => Some((h, p)),
        _ => None,
    };
    let kubeconfig = args
        .kubeconfig
        .clone()
        .or_else(|| args.probe_kubeconfig.clone())
        .or_else(|| std::env::var_os("KUBECONFIG").map(std::path::PathBuf::from));
    let server = match &kubeconfig {
        Some(k) if args.apiserver_endpoints.iter().any(|v| v.trim() == "auto") => {
            // auto degrades: an unreadable kubeconfig leaves the Service
            // and the EndpointSlice to watch, with one line saying so.
            match kubeconfig::kubeconfig_server(k, "kubeconfig") {
                Ok(server) => {
                    let host = server.host().unwrap_or_default().trim_matches(['[', ']']);
                    let port =
                        server
                            .port_u16()
                            .unwrap_or(if server.scheme_str() == Some("http") {
                                80
                            } else {
                                443
                            });
                    Some((
                        endpoints::join(host, &port.to_string()),
                        k.display().to_string(),
                    ))
                }
                Err(e) => {
                    tracing::warn!(
                        "--apiserver-endpoint auto: the kubeconfig's server is not watched: {e:#}"
                    );
                    None
                }
            }
        }
        _ => None,
    };
    let specs = endpoints::specs(&args.apiserver_endpoints, service, server)?;
    let mut resolved = endpoints::resolve(&specs);
    for (spec, why) in &resolved.failed {
        tracing::warn!(
            "endpoint {spec} not resolved: {why}; retried every {}s",
            endpoints::RESOLVE_EVERY.as_secs()
        );
    }
    let slice = endpoint_slice(args, &mut resolved);
    Ok(Some(loader::EndpointOptions {
        specs,
        resolved,
        slice,
    }))
}

/// With `auto`, the `kubernetes` EndpointSlice, read once now with the pod
/// watcher's credentials (its failure is logged, never fatal: the task
/// lists it again every 30 s); `None` without `auto`, credentials or with
/// `--no-kube` (said in `resolved`).
fn endpoint_slice(
    args: &RunArgs,
    resolved: &mut endpoints::Resolved,
) -> Option<endpoints::SliceWatch> {
    if !args.apiserver_endpoints.iter().any(|v| v.trim() == "auto") {
        return None;
    }
    if args.no_kube {
        resolved.slice = endpoints::SliceStatus::Off("--no-kube".into());
        return None;
    }
    let Some(credentials) = kube_credentials(args) else {
        resolved.slice = endpoints::SliceStatus::Off(
            "no --kubeconfig, $KUBECONFIG or ~/.kube/config, and not in a pod".into(),
        );
        return None;
    };
    let w = endpoints::SliceWatch { credentials };
    resolved.slice = w.read_once();
    match &resolved.slice {
        endpoints::SliceStatus::Failed { why, .. } => tracing::warn!(
            "the kubernetes EndpointSlice not read ({why}); retried every {}s",
            endpoints::RESOLVE_EVERY.as_secs()
        ),
        endpoints::SliceStatus::Read(s) => tracing::info!(
            "the kubernetes EndpointSlice: {} ready endpoints watched",
            s.addrs.len()
        ),
        _ => {}
    }
    Some(w)
}

/// The wire observer's interfaces and table, unless `--no-wire`.
fn wire_options(args: &RunArgs) -> anyhow::Result<Option<loader::WireOptions>> {
    // `--netns PATH` naming another namespace: its traffic crosses its own
    // interfaces, so the classifier attaches there (our interfaces never
    // see it), and interfaces are looked up there.
    let wire_netns = match args.netns.as_str() {
        "all" | "self" => None,
        path => {
            let p = std::path::PathBuf::from(path);
            let own =
                iface::is_own_netns(&p).map_err(|e| anyhow::anyhow!("--netns {path}: {e}"))?;
            (!own).then_some(p)
        }
    };
    if args.no_wire {
        return Ok(None);
    }
    let pick = || {
        if args.ifaces.is_empty() {
            Ok(iface::default_ifaces())
        } else {
            args.ifaces
                .iter()
                .map(|n| iface::lookup(n))
                .collect::<Result<Vec<_>, _>>()
        }
    };
    let ifaces = match &wire_netns {
        None => pick(),
        Some(p) => iface::in_netns(p, pick).map_err(|e| {
            anyhow::anyhow!("--netns {}: cannot list its interfaces: {e}", p.display())
        })?,
    }
    .map_err(|e| match &wire_netns {
        Some(p) => anyhow::anyhow!("{e} (looked up in network namespace {})", p.display()),
        None => anyhow::anyhow!(e),
    })?;
    Ok(Some(loader::WireOptions {
        ifaces,
        flow_table: args.flow_table,
        attach: args.tc_attach,
        state_dir: Some(args.state_dir.clone()),
        netns: wire_netns,
    }))
}

/// The HTTP side: TLS trust, the local /readyz poller, the probers (from
/// `--probe-url` and `--probe-kubeconfig`), the pod watch. A wrong probe
/// kubeconfig turns the prober off, not the daemon.
fn http_checks(
    args: &RunArgs,
    pods: Option<kubewatch::PodWatch>,
) -> anyhow::Result<daemon::HttpChecks> {
    let mut probe_urls = args.probe_urls.clone();
    let mut cas: Vec<(String, Vec<u8>)> = Vec::new();
    let mut insecure = args.insecure_skip_tls_verify;
    // A wrong probe kubeconfig turns the prober off, not the daemon: the
    // kernel's view matters most when the API side is broken.
    let mut off = Vec::new();
    if let Some(k) = &args.probe_kubeconfig {
        let target = kubeconfig::kubeconfig_target(k).and_then(|t| {
            let url = format!("{}/readyz", t.server.to_string().trim_end_matches('/'));
            let uri = parse_http_url(&url)
                .map_err(|e| anyhow::anyhow!("--probe-kubeconfig {}: {e}", k.display()))?;
            Ok((uri, t))
        });
        match target {
            Ok((uri, t)) => {
                probe_urls.push(uri);
                cas.extend(t.ca);
                insecure |= t.insecure;
            }
            Err(e) => off.push(("probe", format!("{e:#}; probing through the LB is off"))),
        }
    }
    if let Some(ca) = &args.apiserver_ca {
        let pem = std::fs::read(ca)
            .map_err(|e| anyhow::anyhow!("--apiserver-ca {}: {e}", ca.display()))?;
        cas.push((ca.display().to_string(), pem));
    }
    let tls = match (cas.is_empty(), insecure) {
        (false, false) => httpcheck::Tls::from_ca_pems(&cas)?,
        (_, true) => httpcheck::Tls::insecure(),
        (true, false) => {
            let https = args
                .apiserver_url
                .iter()
                .chain(&probe_urls)
                .any(|u| u.scheme_str() == Some("https"));
            if https {
                anyhow::bail!(
                    "https targets need --apiserver-ca FILE (e.g. the kubeconfig's CA) or --insecure-skip-tls-verify"
                );
            }
            httpcheck::Tls::insecure()
        }
    };
    let modes: Vec<drainwatch_correlate::ProbeMode> = match args.probe_mode.as_str() {
        "new" => vec![drainwatch_correlate::ProbeMode::NewConn],
        "reused" => vec![drainwatch_correlate::ProbeMode::Reused],
        _ => vec![
            drainwatch_correlate::ProbeMode::NewConn,
            drainwatch_correlate::ProbeMode::Reused,
        ],
    };
    Ok(daemon::HttpChecks {
        tls,
        apiserver: args.apiserver_url.clone(),
        readyz_interval: args.readyz_interval,
        probes: probe_urls
            .iter()
            .flat_map(|u| modes.iter().map(move |m| (u.clone(), *m)))
            .collect(),
        probe_interval: args.probe_interval,
        pods,
        off,
    })
}

/// The Kubernetes API's credentials: `--kubeconfig`, `$KUBECONFIG`,
/// `~/.kube/config` or the in-cluster service account, in that order.
fn kube_credentials(args: &RunArgs) -> Option<kubewatch::Credentials> {
    kubewatch::Credentials::choose(
        args.kubeconfig.clone(),
        std::env::var_os("KUBECONFIG"),
        std::env::var_os("HOME").map(std::path::PathBuf::from),
        std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        |p| p.is_file(),
    )
}

/// The pod watcher, if it has credentials ([`kube_credentials`]).
fn pod_watch(args: &RunArgs) -> Option<kubewatch::PodWatch> {
    if args.no_kube {
        return None;
    }
    let Some(credentials) = kube_credentials(args) else {
        tracing::info!(
            "pod watcher off: no --kubeconfig, $KUBECONFIG or ~/.kube/config, and not running in a pod (apiserver pod phase not watched)"
        );
        return None;
    };
    tracing::info!("pod watcher: credentials from {}", credentials.describe());
    Some(kubewatch::PodWatch {
        credentials,
        namespace: args.pod_namespace.clone(),
        selector: args.pod_selector.clone(),
        node: args.node_name.clone(),
        known: Default::default(),
    })
}

/// Verdicts as Kubernetes Events, with the pod watcher's credentials and
/// the pods it sees, unless `--no-kube-events`.
fn kube_events(
    args: &RunArgs,
    pods: Option<&kubewatch::PodWatch>,
) -> Option<crate::export::kube_events::Options> {
    if args.no_kube_events {
        return None;
    }
    let Some(pods) = pods else {
        tracing::info!("Kubernetes Events off: the pod watcher has no credentials or is off");
        return None;
    };
    let node = args
        .node_name
        .clone()
        .or_else(observe::hostname)
        .unwrap_or_else(|| "unknown-node".into());
    tracing::info!("Kubernetes Events on: verdicts reported as node {node}");
    Some(crate::export::kube_events::Options {
        pods: pods.clone(),
        node,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};

    fn parse_run(argv: &[&str]) -> (RunArgs, clap::ArgMatches) {
        use clap::{CommandFactory, FromArgMatches};
        let m = Cli::command().try_get_matches_from(argv).expect("parse");
        let Command::Run(args) = Cli::from_arg_matches(&m).expect("args").command else {
            panic!("not run")
        };
        let (_, sub) = m.subcommand().expect("sub");
        (*args, sub.clone())
    }

    #[test]
    fn config_file_fills_only_what_flags_leave() {
        let dir = std::env::temp_dir().join(format!("dw-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("dw.toml");
        std::fs::write(
            &file,
            "port = [8443]\noutput = \"json\"\nflow-table = 2048\nsocket-table = 4096\nno-wire = true\nmetrics-addr = \"10.1.2.3\"\n",
        )
        .expect("write");
        let f = file.to_str().expect("utf8");
        let (mut args, m) = parse_run(&["drainwatch", "run", "--config", f, "--output", "text"]);
        apply_config_file(&mut args, &m).expect("apply");
        assert_eq!(args.ports, [8443]);
        assert_eq!(args.output, Output::Text, "the flag wins over the file");
        assert_eq!(args.flow_table, 2048);
        assert_eq!(args.socket_table, 4096);
        assert!(args.no_wire);
        assert_eq!(args.metrics_addr.to_string(), "10.1.2.3:9977");

        std::fs::write(&file, "ringbuf-bytes = 5000\n").expect("write");
        let (mut args, m) = parse_run(&["drainwatch", "run", "--config", f]);
        let e = apply_config_file(&mut args, &m).expect_err("bad value");
        assert!(
            e.to_string().contains(f) && e.to_string().contains("key `ringbuf-bytes`"),
            "{e}"
        );
        std::fs::write(&file, "flow-table = 3\n").expect("write");
        let (mut args, m) = parse_run(&["drainwatch", "run", "--config", f]);
        assert!(
            apply_config_file(&mut args, &m)
                .expect_err("range")
                .to_string()
                .contains("flow-table")
        );
        std::fs::write(
            &file,
            "apiserver-endpoint = [\"auto\", \"[fd00::1]:6443\"]\n",
        )
        .expect("write");
        let (mut args, m) = parse_run(&["drainwatch", "run", "--config", f]);
        apply_config_file(&mut args, &m).expect("apply");
        assert_eq!(args.apiserver_endpoints, ["auto", "[fd00::1]:6443"]);
        let (mut args, m) = parse_run(&[
            "drainwatch",
            "run",
            "--config",
            f,
            "--apiserver-endpoint",
            "198.18.0.1:443",
        ]);
        apply_config_file(&mut args, &m).expect("apply");
        assert_eq!(
            args.apiserver_endpoints,
            ["198.18.0.1:443"],
            "the flag wins over the file"
        );
        std::fs::write(&file, "apiserver-endpoint = [\"fd00::1:443\"]\n").expect("write");
        let (mut args, m) = parse_run(&["drainwatch", "run", "--config", f]);
        let e = apply_config_file(&mut args, &m).expect_err("bad endpoint");
        assert_eq!(
            e.to_string(),
            format!(
                "config file {f}: key `apiserver-endpoint`: \"fd00::1:443\": expected HOST:PORT, [IPv6]:PORT or auto"
            )
        );
        std::fs::write(&file, "socket-table = 8\n").expect("write");
        let (mut args, m) = parse_run(&["drainwatch", "run", "--config", f]);
        assert!(
            apply_config_file(&mut args, &m)
                .expect_err("range")
                .to_string()
                .contains("key `socket-table`: 8 is outside 16..=4194304")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kube_events_follow_the_pod_watcher_unless_turned_off() {
        let pods = kubewatch::PodWatch {
            credentials: kubewatch::Credentials::File("/k".into()),
            namespace: "kube-system".into(),
            selector: "component=kube-apiserver".into(),
            node: Some("n1".into()),
            known: Default::default(),
        };
        let (args, _) = parse_run(&["drainwatch", "run", "--node-name", "n1"]);
        let o = kube_events(&args, Some(&pods)).expect("on by default");
        assert_eq!(o.node, "n1");
        assert!(kube_events(&args, None).is_none(), "no credentials: off");
        let (args, _) = parse_run(&["drainwatch", "run", "--no-kube-events"]);
        assert!(kube_events(&args, Some(&pods)).is_none());
    }

    #[test]
    fn metrics_addr_forms() {
        assert_eq!(
            parse_metrics_addr("10.0.0.5:9000").map(|a| a.to_string()),
            Ok("10.0.0.5:9000".into())
        );
        assert_eq!(
            parse_metrics_addr("10.0.0.5").map(|a| a.to_string()),
            Ok("10.0.0.5:9977".into())
        );
        assert_eq!(
            parse_metrics_addr("fd00::5").map(|a| a.to_string()),
            Ok("[fd00::5]:9977".into())
        );
        assert_eq!(
            parse_metrics_addr("[fd00::5]:1").map(|a| a.to_string()),
            Ok("[fd00::5]:1".into())
        );
        assert!(matches!(
            parse_metrics_addr("localhost:x"),
            Err(e) if e.contains("\"localhost:x\"")
        ));
        assert!(parse_ringbuf_bytes("5000").is_err() && parse_ringbuf_bytes("8192").is_ok());
        assert!(parse_kernel_level("loud").is_err());
    }

    #[test]
    fn kube_keepalive_is_whole_seconds_or_off() {
        let (args, _) = parse_run(&["drainwatch", "run"]);
        assert_eq!(args.kube_keepalive, std::time::Duration::from_secs(30));
        for (s, secs) in [("0", 0), ("1s", 1), ("4m", 240), ("32767", 32767)] {
            assert_eq!(parse_keepalive(s), Ok(std::time::Duration::from_secs(secs)));
        }
        for s in ["500ms", "1.5s", "32768s", "x"] {
            let e = parse_keepalive(s).expect_err(s);
            assert!(e.contains(&format!("{s:?}")), "{e}");
        }
    }
}
