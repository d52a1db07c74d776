//! `drainwatch report`: one self-contained HTML file (inline CSS and SVG, no
//! external resources) from a recording (`.jsonl` of observations) or a
//! tcpdump capture: per-instance lifecycle phases as bands, disruptions as
//! marks, outcomes and error rate over time on one time axis (the picture a
//! Grafana dashboard of the rollout would show), a legend and the verdict sentences; plus a
//! terminal summary.

mod html;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use drainwatch_correlate::{Observation, Report};

use crate::pcap::{CaptureFlags, CorrelateFlags, read};

pub use html::render_html;

/// Flags of `drainwatch report`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Write a self-contained HTML timeline of a rollout from a recording or a capture",
    long_about = "Reads a recording (JSON lines of observations, from `drainwatch run --record`) \
        or a tcpdump capture (pcap/pcapng, detected by its magic or forced with --pcap), runs \
        the correlation and writes one HTML file with an SVG timeline: lifecycle phases per \
        instance, disruptions, outcomes and error rate over time, and the verdicts. Prints a \
        summary. Exit status: 0 = no disruption found, 1 = verdicts found."
)]
pub struct ReportArgs {
    /// The recording (.jsonl), capture (.pcap, .pcapng), or a running
    /// daemon's API (`http://127.0.0.1:9977`: its timelines and verdicts now).
    #[arg(value_name = "FILE")]
    pub input: PathBuf,

    /// Treat the input as a capture even if its magic is not recognised (it
    /// then fails with the reason).
    #[arg(long)]
    pub pcap: bool,

    /// Where to write the HTML.
    #[arg(
        short = 'o',
        long = "out",
        value_name = "OUT.html",
        default_value = "drainwatch-report.html"
    )]
    pub out: PathBuf,

    #[command(flatten)]
    pub capture: CaptureFlags,

    #[command(flatten)]
    pub correlate: CorrelateFlags,
}

/// What a report is drawn from.
#[derive(Debug, Clone)]
pub struct Input {
    /// The input file, for the title.
    pub source: String,
    /// The observations correlated.
    pub observations: Vec<Observation>,
    /// The engine's conclusions.
    pub report: Report,
    /// Lines describing what was read (and, for captures, what was not).
    pub summary: Vec<String>,
    /// The instance node-local observations belong to.
    pub default_instance: Option<String>,
}

/// Loads and correlates the input.
pub fn load(args: &ReportArgs) -> anyhow::Result<Input> {
    let data = std::fs::read(&args.input)
        .with_context(|| format!("{}: cannot read", args.input.display()))?;
    let name = args.input.display().to_string();
    let is_capture = args.pcap || read::sniff(&data).is_some();
    if is_capture {
        let decoded = crate::pcap::decode_bytes(&name, &data, &args.capture.flow_options())?;
        let config = args.correlate.config(&args.capture.locals);
        let report = drainwatch_correlate::analyze(&config, decoded.observations.clone())
            .with_context(|| format!("{name}: correlation configuration"))?;
        let summary = crate::pcap::summary_lines(&decoded, &args.capture.ports);
        return Ok(Input {
            source: name,
            observations: decoded.observations,
            report,
            summary,
            default_instance: config.default_instance,
        });
    }
    let text = std::str::from_utf8(&data).map_err(|e| {
        anyhow::anyhow!(
            "{name}: neither a capture (no pcap/pcapng magic) nor a UTF-8 recording: invalid \
             UTF-8 at byte offset {}",
            e.valid_up_to()
        )
    })?;
    let rec = drainwatch_correlate::parse_recording(text)
        .with_context(|| format!("{name}: not a recording of observations"))?;
    let observations = rec.observations;
    // The live configuration from the recording's header, refined by flags.
    let mut base = rec.header.map(|h| h.config).unwrap_or_default();
    if !args.capture.locals.is_empty() {
        base.local_addrs = args.capture.locals.clone();
    }
    let config = args.correlate.apply(base);
    let report = drainwatch_correlate::analyze(&config, observations.clone())
        .with_context(|| format!("{name}: correlation configuration"))?;
    let summary = vec![format!(
        "recording {name}: {} observations ({} duplicates), {} rollouts",
        report.stats.observations,
        report.stats.duplicates,
        report.timelines.len()
    )];
    Ok(Input {
        source: name,
        observations,
        report,
        summary,
        default_instance: config.default_instance,
    })
}

/// Runs `report`: writes the HTML and prints the summary to stdout.
pub fn run(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let verdicts = run_to(args, &mut stdout.lock())?;
    Ok(if verdicts == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs `report` printing to `out`; returns the number of verdicts.
pub fn run_to(args: &ReportArgs, out: &mut dyn Write) -> anyhow::Result<usize> {
    let input = load(args)?;
    let page = render_html(&input);
    write_file(&args.out, &page)?;
    for l in terminal_summary(&input) {
        writeln!(out, "{l}")?;
    }
    writeln!(out, "wrote {} ({} bytes)", args.out.display(), page.len())?;
    Ok(input.report.verdicts.len())
}

fn write_file(path: &Path, page: &str) -> anyhow::Result<()> {
    std::fs::write(path, page)
        .with_context(|| format!("{}: cannot write the report", path.display()))
}

/// The terminal summary: input, rollouts with their phases, verdicts.
pub fn terminal_summary(input: &Input) -> Vec<String> {
    let mut out = input.summary.clone();
    for tl in &input.report.timelines {
        let phases: Vec<String> = tl
            .phases
            .iter()
            .map(|p| {
                format!(
                    "{}{} {:.1}s",
                    p.kind.label(),
                    if p.inferred { "(inferred)" } else { "" },
                    p.t_ns as f64 / 1e9
                )
            })
            .collect();
        out.push(format!(
            "rollout {} #{}{}: {}",
            tl.instance,
            tl.cycle,
            if tl.complete { "" } else { " (incomplete)" },
            phases.join(" -> ")
        ));
    }
    if input.report.verdicts.is_empty() {
        out.push("verdicts: none".into());
    } else {
        out.push(format!("verdicts: {}", input.report.verdicts.len()));
        for v in &input.report.verdicts {
            out.push(format!("  {}", v.line()));
        }
    }
    out
}

#[cfg(test)]
mod tests;
