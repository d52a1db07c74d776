//! The program table: one row per kernel program in the embedded object,
//! with where it attaches, the feature it serves, whether drainwatch can run
//! without it, what stands in for it, and the kernel it needs. The loader
//! walks this table ([`super::load`]); `run --check`, the metrics and the
//! selftest name hooks by [`Program`], never by string.
//!
//! Kernel versions are the releases that added the attach point (the whole
//! daemon needs 5.8 for its ring buffer); a hook the running kernel lacks is
//! reported unavailable with the feature it takes away.

use std::fmt;

/// Every kernel program drainwatch has, by the hook it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Program {
    InetSockSetState,
    InetSkErrorReport,
    TcpRetransmitSkb,
    TcpDestroySock,
    TcpSendReset,
    TcpReceiveReset,
    SignalGenerate,
    SchedProcessExit,
    SchedProcessExec,
    KprobeTcpConnect,
    KprobeTcpReset,
    TcIngress,
    TcEgress,
    GoHttp2Cookie,
    GoHttp2,
}

/// Where a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
    Kprobe {
        function: &'static str,
    },
    /// A TC classifier on every watched interface, in this direction.
    Tc {
        ingress: bool,
    },
    /// Uprobes in Go programs, attached per binary as they are found
    /// (`sources::goh2`), not at load; `cookie`: the probe is named by its
    /// attach cookie (5.15+), else by its address.
    GoUprobes {
        cookie: bool,
    },
}

/// The feature a program serves (what is off without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    /// Connection lifecycle: connects, refusals, listeners, closes.
    Connections,
    /// Why a connect failed without an RST (timeouts, ICMP errors).
    ConnectErrors,
    /// SYN retransmits: connects left unanswered.
    Retransmits,
    /// The socket's end: how long it had been silent, unread data.
    SocketEnd,
    /// RSTs this host sent, with the kernel's reason.
    ResetsSent,
    /// RSTs this host received, with the socket's view.
    ResetsReceived,
    /// Signals and exits of the watched servers.
    ProcessLifecycle,
    /// The wire: every RST's origin and silence, keepalives, GOAWAYs.
    Wire,
    /// HTTP/2 GOAWAY and refused streams inside TLS, from Go programs.
    GoHttp2,
}

impl Feature {
    /// What an operator loses without it, for `run --check` and log lines.
    pub fn what(self) -> &'static str {
        match self {
            Feature::Connections => "connection lifecycle (connects, refusals, listeners)",
            Feature::ConnectErrors => "the errno of connects that fail without an RST",
            Feature::Retransmits => "SYN retransmits (connects left unanswered)",
            Feature::SocketEnd => "how long a socket had been silent when it ended",
            Feature::ResetsSent => "RSTs this host sent, with the kernel's reason",
            Feature::ResetsReceived => "RSTs this host received",
            Feature::ProcessLifecycle => "signals and exits of the watched servers",
            Feature::Wire => "wire events (RST origin and silence, keepalives, GOAWAYs)",
            Feature::GoHttp2 => {
                "HTTP/2 GOAWAY and refused streams inside TLS, from Go programs' own HTTP/2 code"
            }
        }
    }
}

/// The kind of program, as the object declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    TracePoint,
    KProbe,
    UProbe,
    Classifier,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub program: Program,
    /// The program's name in the eBPF object.
    pub object_name: &'static str,
    pub kind: Kind,
    pub attach: Attach,
    pub feature: Feature,
    /// drainwatch does not start without it.
    pub required: bool,
    /// The program this one replaces where that one is missing: it is
    /// loaded and verified, and attached only in its absence.
    pub stands_in_for: Option<Program>,
    /// The kernel release that added the attach point, (major, minor).
    pub since: (u32, u32),
}

/// The table: the loader attaches in this order.
pub const PROGRAMS: &[Spec] = &[
    tracepoint(
        Program::InetSockSetState,
        "sock",
        "inet_sock_set_state",
        Feature::Connections,
        true,
        (4, 16),
    ),
    tracepoint(
        Program::InetSkErrorReport,
        "sock",
        "inet_sk_error_report",
        Feature::ConnectErrors,
        false,
        (5, 14),
    ),
    tracepoint(
        Program::TcpRetransmitSkb,
        "tcp",
        "tcp_retransmit_skb",
        Feature::Retransmits,
        false,
        (4, 15),
    ),
    tracepoint(
        Program::TcpDestroySock,
        "tcp",
        "tcp_destroy_sock",
        Feature::SocketEnd,
        false,
        (4, 15),
    ),
    tracepoint(
        Program::TcpSendReset,
        "tcp",
        "tcp_send_reset",
        Feature::ResetsSent,
        false,
        (4, 15),
    ),
    tracepoint(
        Program::TcpReceiveReset,
        "tcp",
        "tcp_receive_reset",
        Feature::ResetsReceived,
        false,
        (4, 15),
    ),
    tracepoint(
        Program::SignalGenerate,
        "signal",
        "signal_generate",
        Feature::ProcessLifecycle,
        false,
        (3, 0),
    ),
    tracepoint(
        Program::SchedProcessExit,
        "sched",
        "sched_process_exit",
        Feature::ProcessLifecycle,
        false,
        (3, 0),
    ),
    tracepoint(
        Program::SchedProcessExec,
        "sched",
        "sched_process_exec",
        Feature::ProcessLifecycle,
        false,
        (3, 4),
    ),
    Spec {
        program: Program::KprobeTcpConnect,
        object_name: "kprobe_tcp_connect",
        kind: Kind::KProbe,
        attach: Attach::Kprobe {
            function: "tcp_connect",
        },
        // It reports the connecting process at connect time (the
        // tracepoint does it later, in softirq context for some states).
        feature: Feature::Connections,
        required: false,
        stands_in_for: None,
        since: (2, 6),
    },
    Spec {
        program: Program::KprobeTcpReset,
        object_name: "kprobe_tcp_reset",
        kind: Kind::KProbe,
        attach: Attach::Kprobe {
            function: "tcp_reset",
        },
        feature: Feature::ResetsReceived,
        required: false,
        stands_in_for: Some(Program::TcpReceiveReset),
        since: (2, 6),
    },
    Spec {
        program: Program::TcIngress,
        object_name: "tc_ingress",
        kind: Kind::Classifier,
        attach: Attach::Tc { ingress: true },
        feature: Feature::Wire,
        required: false,
        stands_in_for: None,
        since: (4, 5),
    },
    Spec {
        program: Program::TcEgress,
        object_name: "tc_egress",
        kind: Kind::Classifier,
        attach: Attach::Tc { ingress: false },
        feature: Feature::Wire,
        required: false,
        stands_in_for: None,
        since: (4, 5),
    },
    Spec {
        program: Program::GoHttp2Cookie,
        object_name: "go_h2_cookie",
        kind: Kind::UProbe,
        attach: Attach::GoUprobes { cookie: true },
        feature: Feature::GoHttp2,
        required: false,
        stands_in_for: None,
        // bpf_get_attach_cookie for uprobes.
        since: (5, 15),
    },
    Spec {
        program: Program::GoHttp2,
        object_name: "go_h2",
        kind: Kind::UProbe,
        attach: Attach::GoUprobes { cookie: false },
        feature: Feature::GoHttp2,
        required: false,
        // Without cookies a position-independent process needs its own map
        // entries, so its first frames can be missed (counted).
        stands_in_for: Some(Program::GoHttp2Cookie),
        // Uprobes through the perf PMU, so none outlives a killed daemon.
        since: (4, 17),
    },
];

const fn tracepoint(
    program: Program,
    category: &'static str,
    name: &'static str,
    feature: Feature,
    required: bool,
    since: (u32, u32),
) -> Spec {
    Spec {
        program,
        // Tracepoint programs are named after their tracepoint.
        object_name: name,
        kind: Kind::TracePoint,
        attach: Attach::Tracepoint { category, name },
        feature,
        required,
        stands_in_for: None,
        since,
    }
}

impl Program {
    /// Its row in [`PROGRAMS`].
    pub fn spec(self) -> &'static Spec {
        PROGRAMS
            .iter()
            .find(|s| s.program == self)
            .expect("every program has a row (checked by a test)")
    }

    pub fn is_tc(self) -> bool {
        matches!(self.spec().attach, Attach::Tc { .. })
    }
}

impl fmt::Display for Attach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attach::Tracepoint { category, name } => write!(f, "tracepoint {category}:{name}"),
            Attach::Kprobe { function } => write!(f, "kprobe {function}"),
            Attach::Tc { ingress: true } => f.write_str("tc ingress"),
            Attach::Tc { ingress: false } => f.write_str("tc egress"),
            Attach::GoUprobes { cookie: true } => f.write_str("uprobe go:http2:cookie"),
            Attach::GoUprobes { cookie: false } => f.write_str("uprobe go:http2"),
        }
    }
}

/// One attachment of a program: where it is (a TC classifier attaches once
/// per interface) and how it fared on this host.
#[derive(Debug, Clone)]
pub struct Hook {
    pub program: Program,
    /// The interface (and namespace) of a TC attachment; `None` otherwise,
    /// or for a classifier that failed before reaching any interface.
    pub place: Option<String>,
    pub state: HookState,
    /// Instructions the verifier accepted, when known.
    pub insns: Option<usize>,
}

/// How one hook fared on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookState {
    Attached,
    /// Present on this kernel but deliberately not used.
    Standby(String),
    Unavailable(String),
}

impl Hook {
    pub fn new(program: Program, state: HookState, insns: Option<usize>) -> Hook {
        Hook {
            program,
            place: None,
            state,
            insns,
        }
    }

    pub fn attached(&self) -> bool {
        self.state == HookState::Attached
    }

    /// A Go uprobe program that loaded and attaches per Go binary.
    pub fn per_binary(&self) -> bool {
        self.state == HookState::Standby(crate::kernel::load::GO_PER_BINARY.into())
    }

    /// The hook as people and the `drainwatch_hook_attached` label name it:
    /// `tracepoint sock:inet_sock_set_state`, `kprobe tcp_connect`,
    /// `tc ingress eth0`.
    pub fn name(&self) -> String {
        let attach = self.program.spec().attach;
        match &self.place {
            Some(p) => format!("{attach} {p}"),
            None => attach.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row names a program of the embedded object, of its kind, and
    /// every program of the object has a row.
    #[test]
    fn the_table_matches_the_embedded_object() {
        let obj = aya_obj::Object::parse(crate::kernel::load::PROBES).expect("the embedded object");
        for s in PROGRAMS {
            let p = obj.programs.get(s.object_name).unwrap_or_else(|| {
                panic!(
                    "{:?}: no program {} in the object",
                    s.program, s.object_name
                )
            });
            let kind_ok = matches!(
                (&p.section, s.kind, s.attach),
                (
                    aya_obj::ProgramSection::TracePoint,
                    Kind::TracePoint,
                    Attach::Tracepoint { .. }
                ) | (
                    aya_obj::ProgramSection::KProbe,
                    Kind::KProbe,
                    Attach::Kprobe { .. }
                ) | (
                    aya_obj::ProgramSection::SchedClassifier,
                    Kind::Classifier,
                    Attach::Tc { .. }
                ) | (
                    aya_obj::ProgramSection::UProbe { .. },
                    Kind::UProbe,
                    Attach::GoUprobes { .. }
                )
            );
            assert!(kind_ok, "{:?}: object section {:?}", s.program, p.section);
        }
        for name in obj.programs.keys() {
            assert!(
                PROGRAMS.iter().any(|s| s.object_name == name),
                "program {name} of the object has no row in the table"
            );
        }
    }

    #[test]
    fn one_row_per_program_and_one_required() {
        let mut seen = std::collections::BTreeSet::new();
        for s in PROGRAMS {
            assert!(seen.insert(s.program), "{:?} twice", s.program);
            assert_eq!(s.program.spec().object_name, s.object_name);
            if let Some(p) = s.stands_in_for {
                assert_eq!(
                    p.spec().feature,
                    s.feature,
                    "{:?} stands in for another feature",
                    s.program
                );
            }
        }
        let required: Vec<_> = PROGRAMS.iter().filter(|s| s.required).collect();
        assert_eq!(required.len(), 1);
        assert_eq!(required[0].program, Program::InetSockSetState);
    }

    /// The socket tracepoints whose record layouts are read from tracefs
    /// are exactly the table's tracepoint rows outside process lifecycle.
    #[test]
    fn tracefs_layouts_cover_the_socket_tracepoints() {
        let rows: Vec<(&str, &str)> = PROGRAMS
            .iter()
            .filter(|s| s.feature != Feature::ProcessLifecycle)
            .filter_map(|s| match s.attach {
                Attach::Tracepoint { category, name } => Some((category, name)),
                _ => None,
            })
            .collect();
        assert_eq!(rows, crate::kernel::tracefs::TRACEPOINTS.to_vec());
    }

    #[test]
    fn hook_names_are_the_metric_labels() {
        let h = Hook::new(Program::InetSockSetState, HookState::Attached, None);
        assert_eq!(h.name(), "tracepoint sock:inet_sock_set_state");
        assert_eq!(
            Hook::new(Program::KprobeTcpConnect, HookState::Attached, None).name(),
            "kprobe tcp_connect"
        );
        let mut tc = Hook::new(Program::TcIngress, HookState::Attached, None);
        tc.place = Some("lo".into());
        assert_eq!(tc.name(), "tc ingress lo");
        assert!(tc.program.is_tc());
    }
}
