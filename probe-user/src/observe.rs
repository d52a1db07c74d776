//! From the daemon's events to the correlation engine's observations, and
//! this host's addresses and name. One mapping, used live
//! and for recordings, so `drainwatch analyze` of a recording gives the
//! verdicts the live daemon gave.

use std::{net::IpAddr, path::PathBuf};

use drainwatch_correlate::{Direction, Keepalive, Obs, Observation, ResetOrigin, Signal, Source};

use crate::event::{Event, EventKind};

/// This host's name: the instance a verdict names when `--instance` is not given.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// This node's addresses (every interface, this network namespace).
pub fn local_addrs() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list freed below.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return out;
    }
    let mut cur = addrs;
    while !cur.is_null() {
        // SAFETY: walking the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr is non-null and its family says which struct it is.
            unsafe {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs.
    unsafe { libc::freeifaddrs(addrs) };
    out
}

/// The observation an event is for the engine, if any.
pub fn observation(ev: &Event, id: u64) -> Option<Observation> {
    let (l, r) = (ev.local, ev.remote);
    let kind = match ev.kind {
        EventKind::Refused => Obs::Refused {
            client: l?,
            server: r?,
            path: None,
        },
        EventKind::Accepted => Obs::Accepted {
            client: r?,
            server: l?,
            path: None,
        },
        EventKind::ResetSent => Obs::ResetSent {
            client: r?,
            server: l?,
            reason: ev.reset_reason.clone(),
            state: Some(ev.state.to_string()),
        },
        EventKind::ResetReceived => Obs::ResetReceived {
            client: l?,
            server: r?,
            state: Some(ev.state.to_string()),
        },
        EventKind::Closed => {
            let passive = ev.direction == Some("passive");
            let (client, server) = if passive { (r?, l?) } else { (l?, r?) };
            Obs::ConnClosed {
                client,
                server,
                // This end closed first when it left ESTABLISHED for FIN_WAIT.
                by_server: passive && matches!(ev.old_state, Some("FIN_WAIT1" | "FIN_WAIT2")),
                pending_request: None,
            }
        }
        EventKind::ListenOpen => Obs::ListenerOpened {
            addr: l,
            pid: ev.pid,
        },
        EventKind::ListenClose => Obs::ListenerClosed {
            addr: l,
            pid: ev.pid,
        },
        EventKind::Signal => {
            let sig = ev.signal.as_ref()?;
            Obs::Signal {
                signal: match sig.number {
                    15 => Signal::Term,
                    9 => Signal::Kill,
                    n => Signal::Other(n as i32),
                },
                pid: ev.pid,
            }
        }
        EventKind::ProcessExit => Obs::ProcessExit {
            pid: ev.pid,
            signal: None,
            code: None,
        },
        EventKind::ProcessExec => Obs::ProcessStart { pid: ev.pid },
        EventKind::WireReset => {
            let w = ev.wire.as_ref()?;
            if w.direction != "received" {
                return None;
            }
            Obs::WireReset {
                client: l,
                server: r,
                origin: match w.origin {
                    Some("peer") => ResetOrigin::Peer,
                    Some("middlebox") => ResetOrigin::Middlebox,
                    Some("local") => ResetOrigin::Local,
                    _ => ResetOrigin::Unknown,
                },
                silence_s: w.silence_seconds?,
                answered_packet: Some(w.answered_packet),
                keepalive: match (w.keepalive.as_deref(), w.keepalive_interval_seconds) {
                    (Some("none"), _) => Keepalive::None,
                    (Some("seen"), _) => Keepalive::Seen,
                    (Some(k), _) => k
                        .trim_end_matches('s')
                        .parse()
                        .map(Keepalive::Interval)
                        .unwrap_or(Keepalive::Unknown),
                    _ => Keepalive::Unknown,
                },
            }
        }
        EventKind::Goaway => {
            let w = ev.wire.as_ref()?;
            Obs::Goaway {
                direction: if w.direction == "received" {
                    Direction::Received
                } else {
                    Direction::Sent
                },
                last_stream_id: w.last_stream_id?,
                error_code: w.error_code?.to_string(),
            }
        }
        EventKind::ConnectAttempt
        | EventKind::Established
        | EventKind::TimedOut
        | EventKind::ConnectError
        | EventKind::ConnectAborted
        | EventKind::Keepalive => return None,
    };
    let source = if ev.wire.is_some() {
        Source::Wire
    } else {
        Source::Kernel
    };
    Some(Observation {
        id,
        t_ns: ev.ts_boot_ns,
        wall: Some(ev.time.clone()),
        instance: None,
        source,
        kind,
    })
}

/// Where `--record` writes observations (JSON lines, the engine's input).
pub struct Recorder {
    out: std::io::BufWriter<std::fs::File>,
    pub path: PathBuf,
}

impl Recorder {
    pub fn create(path: PathBuf) -> anyhow::Result<Recorder> {
        use anyhow::Context as _;
        let f = std::fs::File::create(&path)
            .with_context(|| format!("cannot create --record file {}", path.display()))?;
        Ok(Recorder {
            out: std::io::BufWriter::new(f),
            path,
        })
    }

    pub fn write(&mut self, o: &Observation) -> std::io::Result<()> {
        use std::io::Write as _;
        let line = serde_json::to_string(o).map_err(std::io::Error::other)?;
        writeln!(self.out, "{line}")
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        use std::io::Write as _;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DecodeContext, decode};
    use probe_common::{AF_INET, RawEvent, flags, kind, tcp_state};

    #[test]
    fn refused_becomes_a_refused_observation() {
        let mut r = RawEvent::zeroed();
        r.kind = kind::REFUSED;
        r.family = AF_INET;
        r.sport = 40000;
        r.dport = 6443;
        r.saddr[..4].copy_from_slice(&[198, 18, 0, 1]);
        r.daddr[..4].copy_from_slice(&[198, 18, 0, 2]);
        r.old_state = tcp_state::SYN_SENT;
        r.state = tcp_state::CLOSE;
        r.flags = flags::ACTIVE;
        r.ts_ns = 7;
        let ev = decode(&r, &DecodeContext::plain()).expect("decode");
        let o = observation(&ev, 3).expect("obs");
        assert_eq!((o.id, o.t_ns), (3, 7));
        match o.kind {
            Obs::Refused { client, server, .. } => {
                assert_eq!(client.to_string(), "198.18.0.1:40000");
                assert_eq!(server.to_string(), "198.18.0.2:6443");
            }
            other => panic!("{other:?}"),
        }
        let line = serde_json::to_string(&o).expect("json");
        let back = drainwatch_correlate::parse_jsonl(&line).expect("parse");
        assert_eq!(back, vec![o]);
    }
}
