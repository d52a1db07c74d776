//! `drainwatch analyze`: a recording or a capture, correlated offline by
//! the same engine as live.

use std::process::ExitCode;

use clap::Args;

use crate::{decode::observe, pipeline::Output};

#[derive(Args)]
pub struct AnalyzeArgs {
    /// A recording made with `drainwatch run --record FILE`.
    #[arg(required_unless_present = "pcap", conflicts_with = "pcap")]
    file: Option<std::path::PathBuf>,
    /// A tcpdump capture (pcap or pcapng) instead: decoded into the same
    /// events as the kernel side, then correlated the same way.
    #[arg(long, value_name = "FILE")]
    pcap: Option<std::path::PathBuf>,
    #[command(flatten)]
    capture: drainwatch_ops::pcap::CaptureFlags,
    #[command(flatten)]
    correlate: drainwatch_ops::pcap::CorrelateFlags,
    /// Print JSON instead of text.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

/// `analyze FILE` / `analyze --pcap FILE`: verdicts and timelines offline.
pub fn analyze(args: &AnalyzeArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let format = match args.output {
        Output::Json => drainwatch_ops::OutputFormat::Json,
        _ => drainwatch_ops::OutputFormat::Text,
    };
    if let Some(pcap) = &args.pcap {
        return drainwatch_ops::pcap::run(&drainwatch_ops::pcap::AnalyzePcapArgs {
            file: pcap.clone(),
            capture: args.capture.clone(),
            correlate: args.correlate.clone(),
            output: format,
        });
    }
    let Some(file) = &args.file else {
        anyhow::bail!("give a recording FILE or --pcap FILE");
    };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let rec = drainwatch_correlate::parse_recording(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let config = recording_config(rec.header.map(|h| h.config), args);
    let report = drainwatch_correlate::analyze(&config, rec.observations)
        .map_err(|e| anyhow::anyhow!("correlation settings: {e}"))?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        _ => {
            for v in &report.verdicts {
                println!("VERDICT {}", v.line());
            }
            println!(
                "{} verdict(s) from {} observation(s) in {}",
                report.verdicts.len(),
                report.stats.observations,
                file.display()
            );
        }
    }
    Ok(if report.verdicts.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The configuration `analyze FILE` correlates with: the one the recording
/// was made with (its header line), refined by any flag given; for a
/// recording without a header, the flags alone. This host's addresses at
/// recording time: --local, else the header's, else ours.
fn recording_config(
    recorded: Option<drainwatch_correlate::Config>,
    args: &AnalyzeArgs,
) -> drainwatch_correlate::Config {
    let mut base = recorded.unwrap_or_else(|| drainwatch_correlate::Config {
        local_addrs: observe::local_addrs(),
        ..Default::default()
    });
    if !args.capture.locals.is_empty() {
        base.local_addrs = args.capture.locals.clone();
    }
    args.correlate.apply(base)
}
