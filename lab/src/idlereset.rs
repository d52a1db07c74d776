//! An idle-reset middlebox: Azure Standard Load Balancer's "TCP reset on idle" (the AKS
//! default). A flow through the router that carries no packet for the idle timeout gets
//! an RST sent to both of its ends by the box, each with the other end's address as
//! source (as the LB sends them) and exactly the sequence number that end expects next
//! (RFC 5961: any other in-window value only draws a challenge ACK). Any packet refreshes
//! the idle timer, TCP keepalive probes included, which is why a client with keepalive
//! below the timeout survives and one without loses its connection.
//!
//! It runs as its own process in the router's namespace (`drainwatch-lab idle-reset-box`):
//! an `AF_PACKET` socket sees every IPv4 packet arriving on the given interfaces (each
//! forwarded packet once, on its way in; the box's own RSTs are outgoing and not seen),
//! a flow table keyed by the normalized 4-tuple keeps the last packet time and each
//! direction's next sequence number and last acknowledgment, and a raw IPv4 socket sends
//! the RSTs. The table starts at any packet, so flows already open when the box starts
//! are tracked from their next packet.
//!
//! Blind spots (where the real LB may differ): IPv4 only, no IP fragments; the RST to an
//! end carries that end's own last ACK number (its `rcv_nxt` when it last sent), so data
//! the end received without acknowledging it (a lost ACK, a zero window) leaves the RST
//! one window behind and it is answered with a challenge ACK instead; an end never seen
//! sending gets the other end's next sequence number instead; a flow whose FIN or RST was
//! seen is forgotten (a half-closed flow is not reset); flows beyond `max_flows` are not
//! tracked (counted); the idle check runs every `tick`, so resets come up to one tick late.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clock::now_ns;
use crate::record::{RecordError, Recorder};

/// The box could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum BoxError {
    /// An interface name that does not exist in this namespace.
    #[error("--iface {0}: no such interface in this network namespace")]
    NoIface(String),
    /// A socket call failed.
    #[error("{what}: {source}")]
    Sys {
        /// The call.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The record file.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// How the box runs.
#[derive(Debug, Clone, clap::Args)]
pub struct BoxConfig {
    /// Interfaces whose incoming packets are watched (repeatable), e.g. eth0 and eth1.
    #[arg(long = "iface", required = true)]
    pub ifaces: Vec<String>,
    /// The idle timeout.
    #[arg(long, value_parser = crate::clock::parse_duration)]
    pub idle: std::time::Duration,
    /// Flows tracked at most; packets of further flows pass untracked (counted).
    #[arg(long, default_value_t = 4096)]
    pub max_flows: usize,
    /// Stop after this long (or at SIGTERM/SIGINT).
    #[arg(long, value_parser = crate::clock::parse_duration)]
    pub duration: std::time::Duration,
    /// One JSON line per reset flow, and a summary line at the end.
    #[arg(long)]
    pub out: PathBuf,
}

/// One TCP segment as the box reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Sender.
    pub src: SocketAddrV4,
    /// Receiver.
    pub dst: SocketAddrV4,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (valid with [`ACK`]).
    pub ack: u32,
    /// TCP flags byte.
    pub flags: u8,
    /// Payload length.
    pub len: u32,
}

/// TCP flag bits.
pub const FIN: u8 = 0x01;
/// SYN.
pub const SYN: u8 = 0x02;
/// RST.
pub const RST: u8 = 0x04;
/// ACK.
pub const ACK: u8 = 0x10;

impl Segment {
    /// The sequence number after this segment (SYN and FIN count one each).
    fn end_seq(&self) -> u32 {
        self.seq
            .wrapping_add(self.len)
            .wrapping_add(u32::from(self.flags & SYN != 0))
            .wrapping_add(u32::from(self.flags & FIN != 0))
    }
}

/// Parses an IPv4 packet carrying a whole TCP segment (no fragments); None otherwise.
pub fn parse_ipv4_tcp(p: &[u8]) -> Option<Segment> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 6 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    // More fragments, or not the first fragment: no whole TCP header here.
    let frag = u16::from_be_bytes([p[6], p[7]]);
    if ihl < 20 || total < ihl + 20 || total > p.len() || frag & 0x3fff != 0 {
        return None;
    }
    let t = &p[ihl..total];
    let doff = usize::from(t[12] >> 4) * 4;
    if doff < 20 || doff > t.len() {
        return None;
    }
    let ip = |o: usize| Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]);
    let be32 = |o: usize| u32::from_be_bytes([t[o], t[o + 1], t[o + 2], t[o + 3]]);
    Some(Segment {
        src: SocketAddrV4::new(ip(12), u16::from_be_bytes([t[0], t[1]])),
        dst: SocketAddrV4::new(ip(16), u16::from_be_bytes([t[2], t[3]])),
        seq: be32(4),
        ack: be32(8),
        flags: t[13],
        len: (t.len() - doff) as u32,
    })
}

/// `a` is after `b` in sequence space.
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// What the box knows of one direction of a flow.
#[derive(Debug, Clone, Copy, Default)]
struct Dir {
    /// The highest sequence number after a segment sent this way.
    next_seq: Option<u32>,
    /// The highest acknowledgment sent this way: the sender's `rcv_nxt`.
    last_ack: Option<u32>,
}

impl Dir {
    fn update(&mut self, s: &Segment) {
        let end = s.end_seq();
        if self.next_seq.is_none_or(|n| seq_after(end, n)) {
            self.next_seq = Some(end);
        }
        if s.flags & ACK != 0 && self.last_ack.is_none_or(|n| seq_after(s.ack, n)) {
            self.last_ack = Some(s.ack);
        }
    }
}

#[derive(Debug, Clone)]
struct Flow {
    /// The sender of the first packet seen, and its peer.
    first: (SocketAddrV4, SocketAddrV4),
    last: Instant,
    last_ns: u64,
    /// Index 0: lower address to higher; 1: the other way.
    dirs: [Dir; 2],
    packets: u64,
}

type Key = (SocketAddrV4, SocketAddrV4);

fn key_of(s: &Segment) -> (Key, usize) {
    let (a, b) = ((*s.src.ip(), s.src.port()), (*s.dst.ip(), s.dst.port()));
    if a <= b {
        ((s.src, s.dst), 0)
    } else {
        ((s.dst, s.src), 1)
    }
}

/// The sequence number an RST to one end carries, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RstSeq {
    /// The sequence number.
    pub seq: u32,
    /// `ack`: the end's own last acknowledgment (its `rcv_nxt`); `seq`: the other
    /// end's next sequence number (the end was never seen acknowledging).
    pub from: String,
}

/// A flow idle past the timeout, to be reset.
#[derive(Debug, Clone, PartialEq)]
pub struct Expired {
    /// The sender of the first packet the box saw of it.
    pub a: SocketAddrV4,
    /// Its peer.
    pub b: SocketAddrV4,
    /// Time since its last packet.
    pub idle: Duration,
    /// Wall time of its last packet (ns).
    pub last_ns: u64,
    /// The RST to `a` (source `b`), if a sequence number is known.
    pub to_a: Option<RstSeq>,
    /// The RST to `b` (source `a`).
    pub to_b: Option<RstSeq>,
    /// Packets seen of the flow.
    pub packets: u64,
}

/// Counters of the box's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// TCP segments seen.
    pub segments: u64,
    /// Flows tracked.
    pub flows: u64,
    /// Flows reset at the idle timeout.
    pub reset: u64,
    /// RSTs sent.
    pub rsts_sent: u64,
    /// RSTs that could not be sent (no sequence number known, or the send failed).
    pub rsts_unsent: u64,
    /// Flows forgotten at a FIN or RST.
    pub closed: u64,
    /// Segments of new flows not tracked because the table was full.
    pub untracked_full: u64,
}

/// The flow table: every tracked flow's last packet and sequence state.
#[derive(Debug)]
pub struct Table {
    flows: HashMap<Key, Flow>,
    max: usize,
    idle: Duration,
    /// What it did so far.
    pub counts: Counts,
}

impl Table {
    /// An empty table of at most `max` flows, resetting after `idle`.
    pub fn new(max: usize, idle: Duration) -> Self {
        Table {
            flows: HashMap::new(),
            max,
            idle,
            counts: Counts::default(),
        }
    }

    /// Flows tracked now.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// No flow tracked.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Accounts one segment seen at `now` (`now_ns` wall time).
    pub fn observe(&mut self, s: &Segment, now: Instant, now_ns: u64) {
        self.counts.segments += 1;
        let (key, dir) = key_of(s);
        if s.flags & (FIN | RST) != 0 {
            if self.flows.remove(&key).is_some() {
                self.counts.closed += 1;
            }
            return;
        }
        if !self.flows.contains_key(&key) {
            if self.flows.len() >= self.max {
                self.counts.untracked_full += 1;
                return;
            }
            self.counts.flows += 1;
        }
        let f = self.flows.entry(key).or_insert_with(|| Flow {
            first: (s.src, s.dst),
            last: now,
            last_ns: now_ns,
            dirs: [Dir::default(); 2],
            packets: 0,
        });
        f.last = now;
        f.last_ns = now_ns;
        f.packets += 1;
        f.dirs[dir].update(s);
    }

    /// Removes and returns every flow idle for the timeout at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Expired> {
        let idle = self.idle;
        let due: Vec<Key> = self
            .flows
            .iter()
            .filter(|(_, f)| now.saturating_duration_since(f.last) >= idle)
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for k in due {
            let Some(f) = self.flows.remove(&k) else {
                continue;
            };
            // The end `i` (0 = k.0, 1 = k.1) sends in direction `i`, receives in `1 - i`.
            let rst_to = |i: usize| {
                let own = f.dirs[i].last_ack.map(|seq| RstSeq {
                    seq,
                    from: "ack".into(),
                });
                own.or_else(|| {
                    f.dirs[1 - i].next_seq.map(|seq| RstSeq {
                        seq,
                        from: "seq".into(),
                    })
                })
            };
            let (to_lo, to_hi) = (rst_to(0), rst_to(1));
            let a_is_lo = f.first.0 == k.0;
            let (to_a, to_b) = if a_is_lo {
                (to_lo, to_hi)
            } else {
                (to_hi, to_lo)
            };
            self.counts.reset += 1;
            out.push(Expired {
                a: f.first.0,
                b: f.first.1,
                idle: now.saturating_duration_since(f.last),
                last_ns: f.last_ns,
                to_a,
                to_b,
                packets: f.packets,
            });
        }
        out
    }
}

/// The Internet checksum of `data` added to `sum`.
fn csum(mut sum: u32, data: &[u8]) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 TCP RST from `src` to `dst` with sequence number `seq` (no ACK bit, as an
/// LB's reset of a flow it holds no data of).
pub fn rst_packet(src: SocketAddrV4, dst: SocketAddrV4, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ip_sum = csum(0, &p[..20]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&src.port().to_be_bytes());
    t[2..4].copy_from_slice(&dst.port().to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = RST;
    // Pseudo header: addresses, protocol, TCP length.
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.ip().octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let partial: u32 = pseudo
        .chunks_exact(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let sum = csum(partial, t);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    p
}

/// One line of the box's record file: a reset flow, or the summary at exit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResetRecord {
    /// `reset` or `summary`.
    pub event: String,
    /// When (ns): for `reset`, just before the RSTs were sent.
    pub t_ns: u64,
    /// The sender of the first packet seen of the flow (`reset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<String>,
    /// Its peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<String>,
    /// Seconds without a packet when it was reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_s: Option<f64>,
    /// Wall time of the flow's last packet (ns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_packet_ns: Option<u64>,
    /// The RST sent to `a` (source `b`): its sequence number, or None if unsent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rst_to_a: Option<RstSeq>,
    /// The RST sent to `b` (source `a`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rst_to_b: Option<RstSeq>,
    /// Packets seen of the flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    /// The counters (`summary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Counts>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn sys(what: &'static str) -> impl FnOnce(std::io::Error) -> BoxError {
    move |source| BoxError::Sys { what, source }
}

fn last_os(what: &'static str) -> BoxError {
    BoxError::Sys {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// Sends `pkt` (an IPv4 packet with its header) through the raw socket.
fn send_raw(fd: &OwnedFd, pkt: &[u8], dst: Ipv4Addr) -> std::io::Result<()> {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid buffer and sockaddr of the sizes given.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs the box until `duration` passed or SIGTERM/SIGINT; returns its counters (also
/// written as the record file's last line). Prints `READY` once its sockets are open.
pub fn run(cfg: &BoxConfig) -> Result<Counts, BoxError> {
    let ifindex = iface_indexes(&cfg.ifaces)?;
    let rec = Recorder::open(&cfg.out)?;
    let (sniff, raw) = open_sockets()?;
    stop_on_signals();
    let mut table = Table::new(cfg.max_flows.max(1), cfg.idle);
    // The idle check's period: resets are at most this late.
    let tick = (cfg.idle / 100).clamp(Duration::from_millis(5), Duration::from_millis(100));
    let deadline = Instant::now() + cfg.duration;
    let mut buf = vec![0u8; 65536];
    println!(
        "READY idle={:.3}s ifaces={}",
        cfg.idle.as_secs_f64(),
        cfg.ifaces.join(",")
    );
    while !STOP.load(Ordering::Relaxed) && Instant::now() < deadline {
        wait_readable(&sniff, tick)?;
        receive_batch(&sniff, &mut buf, &ifindex, &mut table)?;
        reset_expired(&mut table, &raw, &rec);
    }
    write_summary(&rec, table.counts);
    Ok(table.counts)
}

/// The index of each interface named, in this network namespace.
fn iface_indexes(ifaces: &[String]) -> Result<Vec<i32>, BoxError> {
    let mut ifindex = Vec::new();
    for name in ifaces {
        let c =
            std::ffi::CString::new(name.as_str()).map_err(|_| BoxError::NoIface(name.clone()))?;
        // SAFETY: a NUL-terminated name.
        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if i == 0 {
            return Err(BoxError::NoIface(name.clone()));
        }
        ifindex.push(i as i32);
    }
    Ok(ifindex)
}

/// The `AF_PACKET` socket that sees IPv4 packets and the raw socket that sends RSTs.
fn open_sockets() -> Result<(OwnedFd, OwnedFd), BoxError> {
    let proto = (libc::ETH_P_IP as u16).to_be();
    // SAFETY: plain socket calls; the fds are owned at once.
    let sniff = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
    if sniff < 0 {
        return Err(last_os("socket(AF_PACKET)"));
    }
    // SAFETY: a fresh fd.
    let sniff = unsafe { OwnedFd::from_raw_fd(sniff) };
    // SAFETY: as above.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if raw < 0 {
        return Err(last_os("socket(AF_INET, SOCK_RAW)"));
    }
    // SAFETY: a fresh fd.
    let raw = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok((sniff, raw))
}

/// SIGTERM and SIGINT end the run loop (through [`STOP`]).
fn stop_on_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(
                sig,
                on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

/// Waits up to `tick` for a packet on `sniff` (a signal ends the wait early).
fn wait_readable(sniff: &OwnedFd, tick: Duration) -> Result<(), BoxError> {
    let mut pfd = libc::pollfd {
        fd: sniff.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, tick.as_millis() as i32) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(sys("poll")(e));
        }
    }
    Ok(())
}

/// Reads the packets queued on `sniff` into `table`, those that came in by one of the
/// interfaces `ifindex`.
fn receive_batch(
    sniff: &OwnedFd,
    buf: &mut [u8],
    ifindex: &[i32],
    table: &mut Table,
) -> Result<(), BoxError> {
    // Bounded per round, so the idle check runs even under a flood.
    for _ in 0..4096 {
        // SAFETY: zeroed sockaddr_ll is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut sl = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: valid buffer and address of the sizes given.
        let n = unsafe {
            libc::recvfrom(
                sniff.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&mut sll as *mut libc::sockaddr_ll).cast(),
                &mut sl,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => break,
                _ => return Err(sys("recvfrom(AF_PACKET)")(e)),
            }
        }
        // Each forwarded packet once: on the interface it came in by.
        if sll.sll_pkttype == libc::PACKET_OUTGOING || !ifindex.contains(&sll.sll_ifindex) {
            continue;
        }
        if let Some(s) = parse_ipv4_tcp(&buf[..n as usize]) {
            table.observe(&s, Instant::now(), now_ns());
        }
    }
    Ok(())
}

/// Resets every flow idle for the timeout now: an RST to each end, and one `reset`
/// record per flow.
fn reset_expired(table: &mut Table, raw: &OwnedFd, rec: &Recorder) {
    for e in table.expire(Instant::now()) {
        // Before the RSTs leave, so the ends' reactions come after this time.
        let at = now_ns();
        for (to, from, rst) in [(e.a, e.b, &e.to_a), (e.b, e.a, &e.to_b)] {
            let sent = rst
                .as_ref()
                .map(|r| send_raw(raw, &rst_packet(from, to, r.seq), *to.ip()));
            match sent {
                Some(Ok(())) => table.counts.rsts_sent += 1,
                Some(Err(err)) => {
                    tracing::warn!("RST {from} -> {to}: {err}");
                    table.counts.rsts_unsent += 1;
                }
                None => table.counts.rsts_unsent += 1,
            }
        }
        rec.write(&ResetRecord {
            event: "reset".into(),
            t_ns: at,
            a: Some(e.a.to_string()),
            b: Some(e.b.to_string()),
            idle_s: Some(e.idle.as_secs_f64()),
            last_packet_ns: Some(e.last_ns),
            rst_to_a: e.to_a,
            rst_to_b: e.to_b,
            packets: Some(e.packets),
            counts: None,
        });
    }
}

/// The record file's last line: the box's counters.
fn write_summary(rec: &Recorder, counts: Counts) {
    rec.write(&ResetRecord {
        event: "summary".into(),
        t_ns: now_ns(),
        a: None,
        b: None,
        idle_s: None,
        last_packet_ns: None,
        rst_to_a: None,
        rst_to_b: None,
        packets: None,
        counts: Some(counts),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(src: &str, dst: &str, seq: u32, ack: u32, flags: u8, len: u32) -> Segment {
        Segment {
            src: src.parse().expect("addr"),
            dst: dst.parse().expect("addr"),
            seq,
            ack,
            flags,
            len,
        }
    }

    #[test]
    fn rst_packet_parses_back_with_valid_checksums() {
        let a: SocketAddrV4 = "198.18.2.10:40000".parse().expect("addr");
        let b: SocketAddrV4 = "198.18.3.10:6443".parse().expect("addr");
        let p = rst_packet(b, a, 0xfffffff0);
        let s = parse_ipv4_tcp(&p).expect("parses");
        assert_eq!(
            (s.src, s.dst, s.seq, s.flags, s.len),
            (b, a, 0xfffffff0, RST, 0)
        );
        // A header with its checksum sums to zero.
        assert_eq!(csum(0, &p[..20]), 0);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&b.ip().octets());
        pseudo.extend_from_slice(&a.ip().octets());
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(&p[20..]);
        assert_eq!(csum(0, &pseudo), 0);
    }

    #[test]
    fn rejects_what_is_not_a_whole_tcp_segment() {
        let a: SocketAddrV4 = "198.18.2.10:1".parse().expect("addr");
        let mut p = rst_packet(a, a, 1);
        assert!(parse_ipv4_tcp(&p[..30]).is_none());
        p[7] = 1; // a later fragment
        assert!(parse_ipv4_tcp(&p).is_none());
        p[7] = 0;
        p[9] = 17; // UDP
        assert!(parse_ipv4_tcp(&p).is_none());
    }

    #[test]
    fn resets_with_each_ends_own_ack_after_the_idle_timeout() {
        let idle = Duration::from_secs(4);
        let mut t = Table::new(8, idle);
        let t0 = Instant::now();
        // Seen mid-stream: the client's data, the server's reply, the client's ACK.
        let c = "198.18.2.10:40000";
        let s = "198.18.3.10:6443";
        t.observe(&seg(c, s, 1000, 5000, ACK, 100), t0, 1);
        t.observe(&seg(s, c, 5000, 1100, ACK, 50), t0, 2);
        t.observe(
            &seg(c, s, 1100, 5050, ACK, 0),
            t0 + Duration::from_secs(1),
            3,
        );
        assert!(t.expire(t0 + Duration::from_millis(4900)).is_empty());
        let e = t.expire(t0 + Duration::from_secs(5));
        assert_eq!(e.len(), 1);
        let e = &e[0];
        assert_eq!((e.a.to_string(), e.b.to_string()), (c.into(), s.into()));
        assert_eq!(e.idle, Duration::from_secs(4));
        assert_eq!(
            e.to_a.as_ref().map(|r| (r.seq, r.from.as_str())),
            Some((5050, "ack"))
        );
        assert_eq!(
            e.to_b.as_ref().map(|r| (r.seq, r.from.as_str())),
            Some((1100, "ack"))
        );
        assert!(t.is_empty(), "a reset flow is forgotten");
        assert_eq!(t.counts.reset, 1);
    }

    #[test]
    fn a_keepalive_probe_refreshes_the_flow_and_does_not_move_sequence_numbers() {
        let mut t = Table::new(8, Duration::from_secs(4));
        let t0 = Instant::now();
        let c = "198.18.2.10:40000";
        let s = "198.18.3.10:6443";
        t.observe(&seg(c, s, 1000, 5000, ACK, 10), t0, 1);
        t.observe(&seg(s, c, 5000, 1010, ACK, 0), t0, 2);
        for k in 1..=5u64 {
            // The probe carries snd_nxt - 1 and no data; the answer is a pure ACK.
            let at = t0 + Duration::from_secs(3 * k);
            t.observe(&seg(c, s, 1009, 5000, ACK, 0), at, 3);
            t.observe(&seg(s, c, 5000, 1010, ACK, 0), at, 4);
            assert!(t.expire(at + Duration::from_secs(3)).is_empty());
        }
        let e = t.expire(t0 + Duration::from_secs(20));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].to_b.as_ref().map(|r| r.seq), Some(1010));
        assert_eq!(e[0].to_a.as_ref().map(|r| r.seq), Some(5000));
    }

    #[test]
    fn fin_forgets_and_the_table_is_bounded() {
        let mut t = Table::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        t.observe(&seg("10.0.0.1:1", "10.0.0.2:2", 1, 1, ACK, 0), t0, 1);
        t.observe(&seg("10.0.0.2:2", "10.0.0.1:1", 1, 2, ACK | FIN, 0), t0, 2);
        assert!(t.is_empty());
        assert_eq!(t.counts.closed, 1);
        for p in 10..20u16 {
            t.observe(
                &seg("10.0.0.1:1", &format!("10.0.0.2:{p}"), 1, 1, ACK, 0),
                t0,
                3,
            );
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.counts.untracked_full, 8);
        // Only one side seen, no ACK from the other: its RST uses the sender's next seq.
        let mut t = Table::new(2, Duration::from_secs(1));
        t.observe(&seg("10.0.0.1:1", "10.0.0.2:2", 7, 0, SYN, 0), t0, 1);
        let e = t.expire(t0 + Duration::from_secs(1));
        assert_eq!(
            e[0].to_b.as_ref().map(|r| (r.seq, r.from.as_str())),
            Some((8, "seq"))
        );
        assert_eq!(e[0].to_a, None);
    }
}
