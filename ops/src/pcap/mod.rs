//! `drainwatch analyze --pcap FILE`: decodes a tcpdump capture (pcap or
//! pcapng) into the observations the kernel side would have made on the
//! capture host (refused SYNs, handshakes, resets with origin and silence,
//! keepalive, closes, cleartext HTTP/2 GOAWAY) and runs the same correlation
//! engine, so someone who only has a capture (say, of idle connections reset
//! by a middlebox) gets the same verdicts as the daemon.

pub mod flows;
/// Segmentation cases shared with the kernel classifier's test.
#[doc(hidden)]
pub mod h2cases;
pub mod packet;
pub mod read;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use drainwatch_correlate::{Cidr, Config, HealthCheck, Obs, Observation, Report};
use serde::Serialize;

use crate::OutputFormat;
use crate::duration::parse_duration;
use flows::{FlowOptions, FlowStats, Tracker};
use read::{CaptureError, Format};

/// Which traffic a capture is about and which side is this host.
#[derive(Debug, Clone, clap::Args)]
pub struct CaptureFlags {
    /// Server port to follow (repeatable). Flows on other ports are counted and ignored.
    #[arg(long = "port", value_name = "PORT", default_values_t = [6443u16, 443])]
    pub ports: Vec<u16>,

    /// This host's address in the capture (repeatable): flows are seen from its side
    /// (who sent an RST, which silence it ended). Without it, the server-port side is
    /// taken as this host, as for a capture taken on the apiserver's node.
    #[arg(long = "local", value_name = "IP")]
    pub locals: Vec<IpAddr>,
}

impl CaptureFlags {
    /// The flow tracker's options.
    pub fn flow_options(&self) -> FlowOptions {
        FlowOptions {
            ports: self.ports.clone(),
            locals: self.locals.clone(),
        }
    }
}

/// What the correlation engine is told besides the observations: shared by
/// `drainwatch run`, `analyze` and `report`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CorrelateFlags {
    /// Name of the apiserver instance the capture host runs (verdicts name it).
    #[arg(long, value_name = "NAME", env = "DRAINWATCH_INSTANCE")]
    pub instance: Option<String>,

    /// A load-balancer VIP clients dial (repeatable).
    #[arg(
        long = "vip",
        value_name = "IP",
        env = "DRAINWATCH_VIP",
        value_delimiter = ','
    )]
    pub vips: Vec<IpAddr>,

    /// A VIP the capture host itself holds (GCP ILB on `lo`, repeatable): its own
    /// connections to it hairpin locally, whatever the health check says.
    #[arg(
        long = "local-vip",
        value_name = "IP",
        env = "DRAINWATCH_LOCAL_VIP",
        value_delimiter = ','
    )]
    pub local_vips: Vec<IpAddr>,

    /// Source address of a proxying LB (HAProxy, ELB; repeatable).
    #[arg(
        long = "lb-addr",
        value_name = "IP",
        env = "DRAINWATCH_LB_ADDR",
        value_delimiter = ','
    )]
    pub lb_addrs: Vec<IpAddr>,

    /// kube-apiserver --shutdown-delay-duration (from /readyz turning red to the
    /// listener closing), e.g. 70s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "DRAINWATCH_SHUTDOWN_DELAY")]
    pub shutdown_delay: Option<std::time::Duration>,

    /// The apiserver's request timeout (from the listener closing to the last
    /// request cut), e.g. 60s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "DRAINWATCH_REQUEST_TIMEOUT")]
    pub request_timeout: Option<std::time::Duration>,

    /// terminationGracePeriodSeconds, e.g. 135s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "DRAINWATCH_GRACE_PERIOD")]
    pub grace_period: Option<std::time::Duration>,

    /// Where the LB's health checks come from (address or prefix, repeatable):
    /// their refusals and resets are the check doing its job, not a disruption.
    /// GCP: 35.191.0.0/16,130.211.0.0/22; AWS NLB/ELB: the LB's own subnet addresses.
    #[arg(
        long = "health-check-source",
        value_name = "CIDR",
        env = "DRAINWATCH_HEALTH_CHECK_SOURCE",
        value_delimiter = ',',
        value_parser = parse_cidr
    )]
    pub health_check_sources: Vec<Cidr>,

    /// The LB's health check as INTERVAL/TIMEOUT/UNHEALTHY-THRESHOLD, e.g.
    /// `10s/5s/2` (an AWS NLB target group's): verdicts compare the measured detection time
    /// with its worst case.
    #[arg(
        long = "lb-health-check",
        value_name = "I/T/N",
        env = "DRAINWATCH_LB_HEALTH_CHECK",
        value_parser = parse_health_check
    )]
    pub lb_health_check: Option<HealthCheck>,
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    Cidr::try_from(s.to_string()).map_err(|e| format!("{s:?}: {e}"))
}

/// `10s/5s/2`: interval, timeout, unhealthy threshold.
pub fn parse_health_check(s: &str) -> Result<HealthCheck, String> {
    let parts: Vec<&str> = s.split('/').collect();
    let [i, t, n] = parts[..] else {
        return Err(format!(
            "{s:?}: expected INTERVAL/TIMEOUT/UNHEALTHY-THRESHOLD, e.g. 10s/5s/2"
        ));
    };
    let interval = parse_duration(i).map_err(|e| format!("{s:?}: interval: {e}"))?;
    let timeout = parse_duration(t).map_err(|e| format!("{s:?}: timeout: {e}"))?;
    let threshold: u32 = n
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?}: threshold {n:?} is not a whole number above 0"))?;
    if interval.is_zero() {
        return Err(format!("{s:?}: the interval must be above 0"));
    }
    Ok(HealthCheck {
        interval_s: interval.as_secs_f64(),
        timeout_s: timeout.as_secs_f64(),
        unhealthy_threshold: threshold,
    })
}

impl CorrelateFlags {
    /// The engine configuration; `local_addrs` are this host's addresses.
    pub fn config(&self, local_addrs: &[IpAddr]) -> Config {
        self.apply(Config {
            local_addrs: local_addrs.to_vec(),
            ..Config::default()
        })
    }

    /// `base` with every setting given here replacing its own (a recording's
    /// configuration, refined on the command line).
    pub fn apply(&self, base: Config) -> Config {
        fn or<T: Clone>(given: &[T], base: Vec<T>) -> Vec<T> {
            if given.is_empty() {
                base
            } else {
                given.to_vec()
            }
        }
        Config {
            default_instance: self.instance.clone().or(base.default_instance),
            vips: or(&self.vips, base.vips),
            local_vips: or(&self.local_vips, base.local_vips),
            lb_addrs: or(&self.lb_addrs, base.lb_addrs),
            health_check_sources: or(&self.health_check_sources, base.health_check_sources),
            shutdown_delay_s: self
                .shutdown_delay
                .map(|d| d.as_secs_f64())
                .or(base.shutdown_delay_s),
            request_timeout_s: self
                .request_timeout
                .map(|d| d.as_secs_f64())
                .or(base.request_timeout_s),
            grace_period_s: self
                .grace_period
                .map(|d| d.as_secs_f64())
                .or(base.grace_period_s),
            health_check: self.lb_health_check.or(base.health_check),
            ..base
        }
    }
}

/// Flags of `drainwatch analyze --pcap`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Explain connection failures from a tcpdump capture (pcap or pcapng)",
    long_about = "Decodes a tcpdump capture into the same events the kernel side records \
        (refused SYNs, handshakes, resets with who sent them by TTL and the silence they \
        ended, keepalive probes, closes, cleartext HTTP/2 GOAWAY) and runs the same \
        correlation as the daemon. TLS payloads are counted as uninspectable. Exit status: \
        0 = no disruption found, 1 = verdicts printed."
)]
pub struct AnalyzePcapArgs {
    /// The capture (tcpdump -w, pcap or pcapng; Ethernet, Linux cooked, raw IP).
    #[arg(long = "pcap", value_name = "FILE")]
    pub file: PathBuf,

    #[command(flatten)]
    pub capture: CaptureFlags,

    #[command(flatten)]
    pub correlate: CorrelateFlags,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// Everything decoded from a capture.
#[derive(Debug, Clone, Serialize)]
pub struct Decoded {
    /// The file, as given.
    pub file: String,
    /// pcap or pcapng.
    pub format: Format,
    /// Frames in the file.
    pub frames: u64,
    /// Frames by link type.
    pub link_types: BTreeMap<String, u64>,
    /// Frames that carried no TCP segment, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// pcapng blocks without packets.
    pub skipped_blocks: u64,
    /// Wall clock of the first and last frame.
    pub first_wall: Option<String>,
    /// See `first_wall`.
    pub last_wall: Option<String>,
    /// Capture duration, seconds.
    pub duration_s: f64,
    /// Flow tracking counts.
    pub flows: FlowStats,
    /// The observations, ids from 1, t_ns from the first frame.
    #[serde(skip)]
    pub observations: Vec<Observation>,
}

pub use drainwatch_correlate::rfc3339;

/// Decodes a capture already in memory; `file` names it in errors.
pub fn decode_bytes(file: &str, data: &[u8], opts: &FlowOptions) -> Result<Decoded, CaptureError> {
    let cap = read::parse(file, data)?;
    let mut link_types = BTreeMap::new();
    let mut skipped = BTreeMap::new();
    let mut tracker = Tracker::new(opts.clone());
    let first = cap.frames.first().map(|f| f.ts_ns).unwrap_or(0);
    let mut last = first;
    let mut segments = Vec::new();
    for fr in &cap.frames {
        if !packet::supported(fr.link) {
            return Err(CaptureError::UnsupportedLink {
                file: file.to_string(),
                link: fr.link,
                offset: fr.offset,
            });
        }
        *link_types.entry(format!("{:?}", fr.link)).or_insert(0u64) += 1;
        last = last.max(fr.ts_ns);
        match packet::decode(fr.link, fr.data) {
            Ok(seg) => segments.push((fr.ts_ns, seg)),
            Err(why) => *skipped.entry(why.label().to_string()).or_insert(0u64) += 1,
        }
    }
    let (segments, copies) = dedup_copies(&tracker, segments);
    for (ts, seg) in &segments {
        tracker.push(ts.saturating_sub(first), &rfc3339(*ts), seg);
    }
    let (observations, mut flows) = tracker.finish_all();
    flows.duplicate_copies = copies;
    Ok(Decoded {
        file: file.to_string(),
        format: cap.format,
        frames: cap.frames.len() as u64,
        link_types,
        skipped,
        skipped_blocks: cap.skipped_blocks,
        first_wall: cap.frames.first().map(|f| rfc3339(f.ts_ns)),
        last_wall: cap.frames.last().map(|_| rfc3339(last)),
        duration_s: last.saturating_sub(first) as f64 / 1e9,
        flows,
        observations,
    })
}

/// How far apart two copies of one packet can be (a router forwarding it,
/// or `-i any` on loopback) to be taken as one packet.
const COPY_WINDOW_NS: u64 = 10_000_000;

/// Removes the second copy of packets captured twice: `tcpdump -i any` on a
/// router or middlebox sees each forwarded packet arrive on one interface
/// and leave on another (TTL one lower), and on loopback sees each packet
/// sent and received. Flows must see each packet once, as the host's own
/// classifier does, and with the TTL that host saw: for packets towards
/// the local side the last copy (closest to it) is kept, for packets from
/// it the first. Copies are the same IPv4 id, sequence, acknowledgment,
/// flags and length within [`COPY_WINDOW_NS`]; retransmissions carry a new
/// IPv4 id.
fn dedup_copies<'a>(
    tracker: &Tracker,
    segments: Vec<(u64, packet::Segment<'a>)>,
) -> (Vec<(u64, packet::Segment<'a>)>, u64) {
    type Fp = (
        std::net::SocketAddr,
        std::net::SocketAddr,
        u32,
        u32,
        u8,
        u32,
        u16,
    );
    let mut kept: Vec<(u64, packet::Segment<'a>)> = Vec::with_capacity(segments.len());
    let mut recent: HashMap<Fp, (usize, u64)> = HashMap::new();
    let mut order: VecDeque<(u64, Fp)> = VecDeque::new();
    let mut copies = 0;
    for (ts, seg) in segments {
        while order
            .front()
            .is_some_and(|(t, _)| ts.saturating_sub(*t) > COPY_WINDOW_NS)
        {
            if let Some((t, fp)) = order.pop_front()
                && recent.get(&fp).is_some_and(|(_, last)| *last == t)
            {
                recent.remove(&fp);
            }
        }
        let fp: Fp = (
            seg.src,
            seg.dst,
            seg.seq,
            seg.ack,
            seg.flags,
            seg.payload_len,
            seg.ip_id,
        );
        if let Some((idx, last)) = recent.get_mut(&fp)
            && ts.saturating_sub(*last) <= COPY_WINDOW_NS
        {
            copies += 1;
            *last = ts;
            order.push_back((ts, fp));
            let towards_local = tracker
                .orient(&seg)
                .is_some_and(|(local, _)| local == seg.dst);
            if towards_local && let Some(slot) = kept.get_mut(*idx) {
                // Keep the first copy's place in time, the last copy's TTL.
                slot.1.ttl = seg.ttl;
            }
            continue;
        }
        recent.insert(fp, (kept.len(), ts));
        order.push_back((ts, fp));
        kept.push((ts, seg));
    }
    (kept, copies)
}

/// Reads and decodes a capture file.
pub fn decode_file(path: &Path, opts: &FlowOptions) -> Result<Decoded, CaptureError> {
    let data = read::read_file(path)?;
    decode_bytes(&path.display().to_string(), &data, opts)
}

/// Observation counts by kind, for the summary.
pub fn count_kinds(obs: &[Observation]) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    for o in obs {
        let k = match &o.kind {
            Obs::Refused { .. } => "refused",
            Obs::Accepted { .. } => "accepted",
            Obs::ResetSent { .. } => "reset_sent",
            Obs::ResetReceived { .. } => "reset_received",
            Obs::ConnClosed { .. } => "conn_closed",
            Obs::WireReset { .. } => "wire_reset",
            Obs::Goaway { .. } => "goaway",
            _ => "other",
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

fn join<K: std::fmt::Display, V: std::fmt::Display>(m: impl IntoIterator<Item = (K, V)>) -> String {
    let v: Vec<String> = m.into_iter().map(|(k, v)| format!("{k} {v}")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The text summary of a decoded capture (shared with `report`).
pub fn summary_lines(d: &Decoded, ports: &[u16]) -> Vec<String> {
    let f = &d.flows;
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut out = vec![
        format!(
            "capture {} ({:?}, {} frames, {:.3} s, {} .. {})",
            d.file,
            d.format,
            d.frames,
            d.duration_s,
            d.first_wall.as_deref().unwrap_or("-"),
            d.last_wall.as_deref().unwrap_or("-"),
        ),
        format!(
            "decoded: {} TCP segments on port {} in {} flows ({} from SYN, {} mid-stream); \
             {} handshakes, {} refused, {} unanswered SYNs; resets: {}; {} keepalive probes on \
             {} flows; {} orderly closes; {} GOAWAY ({} HTTP/2 directions followed)",
            f.segments,
            ports.join(","),
            f.flows,
            f.flows_from_syn,
            f.flows_mid_stream,
            f.handshakes,
            f.refused,
            f.unanswered_syns,
            join(f.resets.iter()),
            f.keepalive_probes,
            f.flows_with_keepalive,
            f.closes,
            f.goaways,
            f.h2_followed,
        ),
        format!(
            "not decoded: {} segments on other ports, {} second copies of a packet dropped; \
             frames without a TCP segment: {}",
            f.unwatched_segments,
            f.duplicate_copies,
            join(d.skipped.iter()),
        ),
        format!("not inspectable for HTTP/2: {}", join(f.uninspected.iter())),
        format!(
            "observations: {} ({})",
            d.observations.len(),
            join(count_kinds(&d.observations))
        ),
    ];
    if d.skipped_blocks > 0 {
        out.push(format!(
            "pcapng blocks without packets skipped: {}",
            d.skipped_blocks
        ));
    }
    out
}

/// Decodes and correlates: the shared core of `analyze --pcap` and `report`.
pub fn analyze_capture(
    file: &Path,
    capture: &CaptureFlags,
    correlate: &CorrelateFlags,
) -> anyhow::Result<(Decoded, Report)> {
    let decoded = decode_file(file, &capture.flow_options())?;
    let config = correlate.config(&capture.locals);
    let report = drainwatch_correlate::analyze(&config, decoded.observations.clone())
        .with_context(|| format!("{}: correlation configuration", file.display()))?;
    Ok((decoded, report))
}

#[derive(Serialize)]
struct JsonOut<'a> {
    capture: &'a Decoded,
    observations: &'a [Observation],
    report: &'a Report,
}

/// Runs `analyze --pcap`, printing to stdout. Exit 1 when there are verdicts.
pub fn run(args: &AnalyzePcapArgs) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let verdicts = run_to(args, &mut stdout.lock())?;
    Ok(if verdicts == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs `analyze --pcap` writing to `out`; returns the number of verdicts.
pub fn run_to(args: &AnalyzePcapArgs, out: &mut dyn Write) -> anyhow::Result<usize> {
    let (decoded, report) = analyze_capture(&args.file, &args.capture, &args.correlate)?;
    match args.output {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(
                &mut *out,
                &JsonOut {
                    capture: &decoded,
                    observations: &decoded.observations,
                    report: &report,
                },
            )?;
            writeln!(out)?;
        }
        OutputFormat::Text => {
            for l in summary_lines(&decoded, &args.capture.ports) {
                writeln!(out, "{l}")?;
            }
            if report.verdicts.is_empty() {
                writeln!(out, "verdicts: none")?;
            } else {
                writeln!(out, "verdicts: {}", report.verdicts.len())?;
                for v in &report.verdicts {
                    writeln!(out, "  {}", v.line())?;
                }
            }
        }
    }
    Ok(report.verdicts.len())
}

#[cfg(test)]
pub(crate) mod synth;
#[cfg(test)]
mod tests;
