//! `drainwatch cluster timeline|verdicts|report`, also run as the kubectl
//! plugin `kubectl drainwatch ...` (the binary named `kubectl-drainwatch`):
//! the flags, then `crate::cluster` does the work.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;

use crate::cluster::{self, Format, fetch};
use crate::sources::kubewatch::Credentials;

/// Flags of `drainwatch cluster`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Every master's rollout on one time axis: reads each drainwatch pod's API through the Kubernetes API",
    long_about = "Finds the drainwatch DaemonSet's pods with your kubeconfig, reads each one's \
        HTTP API (/api/v1/timelines, /api/v1/verdicts) through the Kubernetes API's port-forward \
        to the pod, as `kubectl port-forward` does, and merges them on one wall-clock axis. Also \
        installed as `kubectl-drainwatch`, so `kubectl drainwatch timeline` works. Exit status: \
        0 = every pod read, 1 = some pod could not be read (what was read is still printed)."
)]
pub struct ClusterArgs {
    /// The kubeconfig (else $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (else its current one).
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
    /// The namespace the DaemonSet runs in.
    #[arg(short = 'n', long, global = true, default_value = "drainwatch")]
    namespace: String,
    /// The DaemonSet pods' labels (the deploy manifests' by default).
    #[arg(
        short = 'l',
        long,
        global = true,
        default_value = "app.kubernetes.io/name=drainwatch"
    )]
    selector: String,
    /// The pods' API port (else their container port named `metrics`, else 9977).
    #[arg(long, global = true)]
    port: Option<u16>,
    /// How long one pod may take to answer.
    #[arg(long, global = true, default_value = "15s", value_parser = parse_timeout)]
    timeout: Duration,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Every master's phases, in time order, seconds from the earliest.
    Timeline {
        /// text, wide, json or yaml.
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: Format,
    },
    /// Every node's verdicts, with the node's name.
    Verdicts {
        /// text, wide, json or yaml.
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: Format,
    },
    /// A self-contained HTML report: one row per master on one time axis.
    Report {
        /// Where to write the HTML.
        #[arg(
            short = 'o',
            long = "out",
            value_name = "OUT.html",
            default_value = "drainwatch-cluster.html"
        )]
        out: PathBuf,
    },
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    drainwatch_ops::duration::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// Runs `cluster`.
pub fn run(args: &ClusterArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let view = rt.block_on(read(args))?;
    let text = match &args.what {
        What::Timeline { output } => {
            cluster::timeline_text(&view, *output).map_err(anyhow::Error::msg)?
        }
        What::Verdicts { output } => {
            cluster::verdicts_text(&view, *output).map_err(anyhow::Error::msg)?
        }
        What::Report { out } => {
            let source = format!(
                "cluster: {} drainwatch pod(s) in namespace {}",
                view.nodes.len(),
                args.namespace
            );
            let page = cluster::render(&view, &source);
            std::fs::write(out, &page)
                .with_context(|| format!("{}: cannot write the report", out.display()))?;
            format!(
                "wrote {} ({} bytes): {} master(s), {} rollout(s), {} verdict(s)\n",
                out.display(),
                page.len(),
                view.timelines
                    .iter()
                    .map(|t| t.apiserver.as_str())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len(),
                view.timelines.len(),
                view.verdicts.len()
            )
        }
    };
    print!("{text}");
    let failed = cluster::failures(&view);
    for f in &failed {
        eprintln!("drainwatch cluster: {f}");
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn read(args: &ClusterArgs) -> anyhow::Result<cluster::ClusterView> {
    let credentials = Credentials::choose(
        args.kubeconfig.clone(),
        std::env::var_os("KUBECONFIG"),
        std::env::var_os("HOME").map(PathBuf::from),
        std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        |p| p.exists(),
    )
    .context("no kubeconfig: pass --kubeconfig, set $KUBECONFIG or create ~/.kube/config")?;
    let client =
        crate::sources::kubewatch::client_for(&credentials, args.context.as_deref()).await?;
    let pods = fetch::pods(client, &args.namespace);
    let targets = fetch::discover(&pods, &args.selector, args.port)
        .await
        .with_context(|| format!("namespace {}", args.namespace))?;
    anyhow::ensure!(
        !targets.is_empty(),
        "no pod with labels {:?} in namespace {} (is drainwatch deployed there? see -n and -l)",
        args.selector,
        args.namespace
    );
    let answers = fetch::read_all(&pods, &targets, args.timeout).await;
    Ok(cluster::merge(&answers))
}

/// Whether `report`'s input names a running daemon's API (`http://...`)
/// rather than a recording or capture file.
pub fn is_api_url(input: &std::path::Path) -> bool {
    input
        .to_str()
        .is_some_and(|s| s.starts_with("http://") || s.starts_with("https://"))
}

/// `drainwatch report http://HOST:PORT`: one daemon's timelines and
/// verdicts as they are now, read from its API, drawn as the cluster
/// report draws a node (one row per apiserver it watches).
pub fn report_url(args: &drainwatch_ops::report::ReportArgs) -> anyhow::Result<ExitCode> {
    let text = args.input.to_string_lossy().into_owned();
    let url: hyper::Uri = text
        .parse()
        .map_err(|e| anyhow::anyhow!("report {text}: not a URL: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let data = rt
        .block_on(fetch::read_url(&url, Duration::from_secs(10)))
        .map_err(|e| anyhow::anyhow!("report {e}"))?;
    let node = url.host().unwrap_or("-").to_string();
    let view = cluster::merge(&[cluster::NodeAnswer {
        pod: "-".into(),
        node,
        result: Ok(data),
    }]);
    let page = cluster::render(&view, &format!("drainwatch API at {text}"));
    std::fs::write(&args.out, &page)
        .with_context(|| format!("{}: cannot write the report", args.out.display()))?;
    println!(
        "wrote {} ({} bytes): {} rollout(s), {} verdict(s)",
        args.out.display(),
        page.len(),
        view.timelines.len(),
        view.verdicts.len()
    );
    Ok(ExitCode::SUCCESS)
}
