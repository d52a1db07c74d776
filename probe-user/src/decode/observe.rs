//! From the daemon's events to the correlation engine's observations, and
//! this host's addresses and name. One mapping, used live
//! and for recordings, so `drainwatch analyze` of a recording gives the
//! verdicts the live daemon gave.

use std::net::IpAddr;

use drainwatch_correlate::{Direction, Keepalive, Obs, Observation, ResetOrigin, Signal, Source};

use crate::decode::event::{ConnDirection, Event, EventKind};

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

/// The addresses of the network namespace at `path` (such as
/// /run/netns/NAME or /proc/PID/ns/net), read on a short-lived thread that
/// joins it, so the daemon's own threads stay where they are.
pub fn local_addrs_in(path: &std::path::Path) -> std::io::Result<Vec<IpAddr>> {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only, with a namespace fd we hold open.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(local_addrs())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("address reader thread failed")))
    })
}

/// Tells drainwatch's own connections (the /readyz poller, the prober) from
/// its clients': the kernel sees them like any other, and a poller refused
/// while the apiserver restarts is not a disruption. They connect from a
/// port bound before the SYN, so the connect attempt this process makes
/// carries the whole 4-tuple; every later event of that 4-tuple, on either
/// side (the apiserver may be local), kernel or wire, is drainwatch's own.
/// A flow is forgotten 10 s after its client side ends.
#[derive(Debug, Default)]
pub struct OwnConnections {
    /// (our side, the server) -> when our side ended (boot-clock ns).
    flows: foldhash::HashMap<(std::net::SocketAddr, std::net::SocketAddr), Option<u64>>,
}

/// This process's id (`std::process::id` is a system call each time).
fn own_pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

impl OwnConnections {
    /// How long after its end a flow's stragglers (the server's close, a
    /// late RST) still count as ours.
    const LINGER_NS: u64 = 10_000_000_000;
    /// More flows than the poller and prober ever hold: past this, old ones go.
    const MAX: usize = 4096;

    /// Whether `ev` belongs to one of this process's own connections.
    pub fn is_own(&mut self, ev: &Event) -> bool {
        use crate::decode::event::EventKind as K;
        // The owner table knows every connection this process opened (its
        // connect attempt may come before the source port is assigned):
        // the kube-rs clients' (pod watchers, Events) as well as the
        // poller's and prober's. Their flows are kept too, for the other
        // end's events on this host (which name no owner).
        let by_owner = ev.owner.as_ref().and_then(|o| o.pid) == Some(own_pid());
        let Some((l, r)) = ev.local.zip(ev.remote) else {
            return by_owner;
        };
        if by_owner && ev.kind != K::ConnectAttempt && l.port() != 0 {
            self.flows.entry((l, r)).or_insert(None);
        }
        if ev.kind == K::ConnectAttempt {
            if by_owner && l.port() == 0 {
                return true;
            }
            if ev.pid == Some(own_pid()) && l.port() != 0 {
                self.flows.insert((l, r), None);
                self.expire(ev.ts_boot_ns);
                return true;
            }
            // Someone else's connection on a reused port.
            self.flows.remove(&(l, r));
            return false;
        }
        let key = if self.flows.contains_key(&(l, r)) {
            (l, r)
        } else if self.flows.contains_key(&(r, l)) {
            (r, l)
        } else {
            return false;
        };
        let client_side_end = key == (l, r)
            && ev.wire.is_none()
            && matches!(
                ev.kind,
                K::Refused | K::TimedOut | K::ConnectError | K::ConnectAborted | K::Closed
            );
        if client_side_end && let Some(end) = self.flows.get_mut(&key) {
            *end = Some(ev.ts_boot_ns);
        }
        true
    }

    fn expire(&mut self, now: u64) {
        if self.flows.len() < 64 {
            return;
        }
        self.flows
            .retain(|_, end| end.is_none_or(|t| now.saturating_sub(t) < Self::LINGER_NS));
        if self.flows.len() > Self::MAX {
            self.flows.clear();
        }
    }
}

/// An RST with no socket behind it sent *from* a client's port (a late
/// packet of the apiserver reached a client socket already gone) says
/// nothing about the apiserver: only one sent from a watched (server) port
/// is a refused connection.
pub fn stray_client_reset(ev: &Event, watched: &[u16]) -> bool {
    ev.kind == crate::decode::event::EventKind::ResetSent
        && ev.no_socket
        && ev.local.is_some_and(|l| !watched.contains(&l.port()))
}

/// The observation an event is for the engine, if any.
pub fn observation(ev: &Event, id: u64) -> Option<Observation> {
    let kind = match ev.kind {
        EventKind::Closed => closed(ev)?,
        EventKind::WireReset | EventKind::Goaway => wire(ev)?,
        EventKind::ListenOpen
        | EventKind::ListenClose
        | EventKind::Signal
        | EventKind::ProcessExit
        | EventKind::ProcessExec => process(ev)?,
        EventKind::Refused
        | EventKind::Accepted
        | EventKind::ResetSent
        | EventKind::ResetReceived => connection(ev)?,
        EventKind::ConnectAttempt
        | EventKind::Established
        | EventKind::TimedOut
        | EventKind::ConnectError
        | EventKind::ConnectAborted
        | EventKind::Keepalive
        | EventKind::RefusedStream => return None,
    };
    // Frames a Go program's own code reported come from this node's kernel
    // (uprobes), like every tracepoint event.
    let source = if ev.go.is_some() {
        Source::Kernel
    } else if ev.wire.is_some() {
        Source::Wire
    } else {
        Source::Kernel
    };
    Some(Observation {
        id,
        t_ns: ev.ts_boot_ns,
        wall: Some(ev.time.to_string()),
        instance: None,
        source,
        kind,
        who: ev.owner.clone(),
    })
}

/// Refusals, accepts and RSTs.
fn connection(ev: &Event) -> Option<Obs> {
    let (l, r) = (ev.local, ev.remote);
    Some(match ev.kind {
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
        // A local client's own RST (it aborted its connection) is the
        // client's doing, not the apiserver's.
        EventKind::ResetSent if ev.direction == Some(ConnDirection::Active) => return None,
        EventKind::ResetSent if ev.never_accepted == Some(true) => Obs::AcceptQueueReset {
            client: r?,
            server: l?,
        },
        EventKind::ResetSent => Obs::ResetSent {
            client: r?,
            server: l?,
            reason: ev.reset_reason.clone(),
            state: Some(ev.state.to_string()),
        },
        // The apiserver's socket got an RST from its client: the client aborted.
        EventKind::ResetReceived if ev.direction == Some(ConnDirection::Passive) => return None,
        EventKind::ResetReceived => Obs::ResetReceived {
            client: l?,
            server: r?,
            state: Some(ev.state.to_string()),
        },
        // A close is evidence only when the server closed first with a
        // request still owed (a cut); every other close, two per connection,
        // would only fill the engine's memory.
        // The server closed first while its response was streaming: the
        // stream (a watch) was cut.
        _ => return None,
    })
}

/// A close is evidence only when the server closed first with a request
/// still owed (a cut) or a response still streaming (a watch cut); every
/// other close, two per connection, would only fill the engine's memory.
fn closed(ev: &Event) -> Option<Obs> {
    let (l, r) = (ev.local, ev.remote);
    Some(match ev.kind {
        EventKind::Closed
            if ev.direction == Some(ConnDirection::Passive)
                && ev.response_streaming
                && ev.closed_first() =>
        {
            Obs::StreamCut {
                client: r?,
                server: l?,
            }
        }
        EventKind::Closed
            if !(ev.direction == Some(ConnDirection::Passive)
                && ev.request_pending == Some(true)) =>
        {
            return None;
        }
        EventKind::Closed => {
            let passive = ev.direction == Some(ConnDirection::Passive);
            let (client, server) = if passive { (r?, l?) } else { (l?, r?) };
            Obs::ConnClosed {
                client,
                server,
                // This end closed first when it left ESTABLISHED for FIN_WAIT.
                by_server: passive && ev.closed_first(),
                pending_request: if passive { ev.request_pending } else { None },
            }
        }
        _ => return None,
    })
}

/// Listeners and the watched processes' lifecycle.
fn process(ev: &Event) -> Option<Obs> {
    let l = ev.local;
    Some(match ev.kind {
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
                sender: Some(sig.sender_pid),
            }
        }
        EventKind::ProcessExit => Obs::ProcessExit {
            pid: ev.pid,
            signal: None,
            code: None,
        },
        EventKind::ProcessExec => Obs::ProcessStart { pid: ev.pid },
        _ => return None,
    })
}

/// What the wire observer saw: RSTs received and GOAWAYs.
fn wire(ev: &Event) -> Option<Obs> {
    let (l, r) = (ev.local, ev.remote);
    Some(match ev.kind {
        EventKind::WireReset => {
            let w = ev.wire.as_ref()?;
            if w.direction != Direction::Received {
                return None;
            }
            Obs::WireReset {
                client: l,
                server: r,
                origin: w.origin.unwrap_or(ResetOrigin::Unknown),
                silence_s: w.silence_seconds?,
                answered_packet: Some(w.answered_packet),
                keepalive: w.keepalive.map_or(Keepalive::Unknown, Keepalive::from),
            }
        }
        EventKind::Goaway => {
            let w = ev.wire.as_ref()?;
            // The connection, for cuts of it after the GOAWAY. A GOAWAY this
            // host sent is taken as the server's (the apiserver's node), one
            // it received as the client's; the pipeline turns the pair
            // around by the watched port where that says otherwise
            // ([`orient_goaway`]).
            let (client, server) = match w.direction {
                Direction::Sent => (r, l),
                Direction::Received => (l, r),
            };
            Obs::Goaway {
                direction: w.direction,
                last_stream_id: w.last_stream_id?,
                error_code: w.error_code?.to_string(),
                client,
                server,
            }
        }
        _ => return None,
    })
}

/// Turns a GOAWAY's connection around when its "server" end is not on a
/// watched port and its "client" end is: [`observation`] takes the host's
/// end of a GOAWAY it sent as the server's, which is wrong for a client on
/// the node (its own GOAWAY at close) and for a server's received ones.
pub fn orient_goaway(o: &mut Observation, watched: &[u16]) {
    if let Obs::Goaway {
        client: client @ Some(_),
        server: server @ Some(_),
        ..
    } = &mut o.kind
        && client.is_some_and(|c| watched.contains(&c.port()))
        && server.is_some_and(|s| !watched.contains(&s.port()))
    {
        std::mem::swap(client, server);
    }
}

/// Gives an observation from the poller, prober or pod watcher the wall
/// time a kernel event at the same boot-clock instant gets: they stamp only
/// `t_ns` (the boot clock orders every source on one axis), and without a
/// wall time their phases and verdict windows had none in the report.
pub fn stamp_wall(o: &mut Observation, boot_to_unix_ns: i128) {
    if o.wall.is_none() {
        o.wall = Some(crate::decode::event::rfc3339(
            i128::from(o.t_ns) + boot_to_unix_ns,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::event::{DecodeContext, decode};
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

    /// A GOAWAY a server received (from a client closing) names the client
    /// by the watched port, not by the direction.
    #[test]
    fn goaway_connection_is_oriented_by_the_watched_port() {
        let mut r = RawEvent::zeroed();
        r.kind = kind::GOAWAY;
        r.family = AF_INET;
        r.sport = 6443;
        r.dport = 40000;
        r.saddr[..4].copy_from_slice(&[198, 18, 0, 2]);
        r.daddr[..4].copy_from_slice(&[198, 18, 0, 1]);
        r.flags = flags::INGRESS | flags::FROM_UPROBE | flags::GO_SERVER;
        let ev = decode(&r, &DecodeContext::plain()).expect("decode");
        let mut o = observation(&ev, 1).expect("obs");
        orient_goaway(&mut o, &[6443]);
        match o.kind {
            Obs::Goaway {
                direction,
                client,
                server,
                ..
            } => {
                assert_eq!(direction, drainwatch_correlate::Direction::Received);
                assert_eq!(
                    client.map(|c| c.to_string()).as_deref(),
                    Some("198.18.0.1:40000")
                );
                assert_eq!(
                    server.map(|c| c.to_string()).as_deref(),
                    Some("198.18.0.2:6443")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn poller_observations_get_the_wall_time_of_a_kernel_event_at_that_instant() {
        let cx = DecodeContext {
            boot_to_unix_ns: 1_700_000_000_000_000_000,
            ..DecodeContext::plain()
        };
        let mut r = RawEvent::zeroed();
        r.kind = kind::LISTEN_CLOSE;
        r.family = AF_INET;
        r.sport = 6443;
        r.old_state = tcp_state::LISTEN;
        r.state = tcp_state::CLOSE;
        r.ts_ns = 42_500_000_123;
        let kernel = observation(&decode(&r, &cx).expect("decode"), 1).expect("obs");
        let mut red = Observation {
            id: 0,
            t_ns: r.ts_ns,
            wall: None,
            instance: None,
            source: drainwatch_correlate::Source::Poller,
            kind: Obs::ReadyzChanged { ready: false },
            who: None,
        };
        stamp_wall(&mut red, cx.boot_to_unix_ns);
        assert_eq!(red.wall, kernel.wall);
        assert_eq!(red.wall.as_deref(), Some("2023-11-14T22:14:02.500000Z"));
        // A wall time the source set itself is kept.
        red.wall = Some("given".into());
        stamp_wall(&mut red, cx.boot_to_unix_ns);
        assert_eq!(red.wall.as_deref(), Some("given"));
    }
}
