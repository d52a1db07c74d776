//! Loading the kernel programs and attaching them, with fallback: a hook
//! this kernel lacks disables what needs it, with one log line saying why.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        KProbe, LinkOrder, SchedClassifier, TcAttachType, TracePoint, UProbe,
        tc::{self, NlOptions, TcAttachOptions},
    },
};
use probe_common::{
    Layouts, PORT_BITMAP_WORDS, RUNTIME_ENDPOINTS, RUNTIME_KPROBE_CONNECT, RUNTIME_NO_DESTROY,
    SockLayout, TcpSockLayout,
};

use crate::kernel::{
    btf,
    iface::Iface,
    leftovers::{self, Ledger, TcFilter},
    programs::{Attach, Feature, Kind, PROGRAMS, Program, Spec},
    tracefs,
};

/// The compiled kernel programs, embedded at build time.
pub(crate) static PROBES: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "drainwatch needs root, or the capabilities CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8), to load its kernel programs; this process lacks {0}. Run it with sudo, or as the pod in deploy/."
    )]
    NoPrivilege(String),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error("loading the kernel programs failed")]
    Load(#[from] aya::EbpfError),
    #[error(
        "the kernel refused the event ring buffer: BPF ring buffers need Linux 5.8 or newer, this is {0}"
    )]
    NoRingBuf(String, #[source] Box<aya::EbpfError>),
    #[error("kernel map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("the core tracepoint sock:inet_sock_set_state is unusable: {0}")]
    NoCore(String),
    #[error(transparent)]
    Ledger(#[from] leftovers::LedgerError),
}

pub use crate::kernel::programs::{Hook, HookState};

/// The state of a loaded Go uprobe program: it attaches per binary.
pub const GO_PER_BINARY: &str = "loaded; attached to each Go binary as it is found";

/// Options for [`load`].
pub struct LoadOptions {
    pub ports: Vec<u16>,
    pub ringbuf_bytes: u32,
    /// Sockets the connection tracepoints track at once (`SOCKS`).
    pub socket_table: u32,
    /// aya-log level for kernel-side diagnostics (0 off .. 5 trace).
    pub kernel_log_level: u8,
    /// Try the kprobe path (it is still only used where the kernel allows).
    pub kprobes: bool,
    /// The wire observer (TC classifier), if wanted.
    pub wire: Option<WireOptions>,
    /// Process names whose signals and exits are reported (besides the
    /// owners of watched listeners), at most `WATCH_COMMS`.
    pub watch_comms: Vec<String>,
    /// Report only this network namespace (its inode number); `None`: all.
    pub netns: Option<u32>,
    /// Hook Go programs' HTTP/2 code (uprobes attached per binary).
    pub go_uprobes: bool,
    /// Go clients' process names to hook, besides `watch_comms`.
    pub go_clients: Vec<String>,
    /// Endpoint mode: only these (address, port) pairs are watched.
    pub endpoints: Option<EndpointOptions>,
}

/// Endpoint mode's endpoints: as given, what they resolved to at start, and
/// the `kubernetes` EndpointSlice to read (`auto` with credentials).
pub struct EndpointOptions {
    pub specs: Vec<crate::sources::endpoints::Spec>,
    pub resolved: crate::sources::endpoints::Resolved,
    pub slice: Option<crate::sources::endpoints::SliceWatch>,
}

/// Where and how big the wire observer is.
pub struct WireOptions {
    pub ifaces: Vec<Iface>,
    pub flow_table: u32,
    pub attach: TcAttach,
    /// Where the ledger of added filters and qdiscs is kept (see
    /// [`leftovers`](crate::kernel::leftovers)); `None`: in memory only.
    pub state_dir: Option<std::path::PathBuf>,
    /// The network namespace `ifaces` are in and the classifier attaches
    /// in (`--netns PATH` naming another one); `None`: the daemon's own.
    pub netns: Option<std::path::PathBuf>,
}

impl WireOptions {
    /// Where the classifier attaches, for `--check` and log lines.
    pub fn place(&self) -> String {
        let names: Vec<&str> = self.ifaces.iter().map(|i| i.name.as_str()).collect();
        match &self.netns {
            Some(p) => format!("{} in network namespace {}", names.join(", "), p.display()),
            None => format!("{} in drainwatch's own network namespace", names.join(", ")),
        }
    }
}

/// How the TC classifier is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TcAttach {
    /// TCX links where the kernel has them (6.6+), else clsact + netlink.
    Auto,
    /// TCX links only.
    Tcx,
    /// A clsact qdisc (created if missing) and a netlink filter.
    Netlink,
}

/// Loaded and attached programs; dropping it detaches everything.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub hooks: Vec<Hook>,
    pub reset_reasons: Vec<(u64, String)>,
    /// Netlink filters and clsact qdiscs this process added (TCX links
    /// need neither); dropping it removes them: the daemon leaves no trace.
    pub tc: Ledger,
}

/// The capabilities missing for loading programs, by name; empty when the
/// effective set allows it (or when it cannot be read: the kernel decides).
pub fn missing_privileges() -> Vec<&'static str> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Vec::new();
    };
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return Vec::new();
    };
    missing_from(eff)
}

/// Which of CAP_BPF and CAP_PERFMON an effective set lacks (none if it has
/// CAP_SYS_ADMIN, which covers both on every kernel).
pub fn missing_from(eff: u64) -> Vec<&'static str> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let has = |c: u32| eff & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(c, _)| !has(*c))
        .map(|(_, n)| n)
        .collect()
}

/// Builds the watched-port bitmap words.
pub fn port_bitmap(ports: &[u16]) -> Vec<(u32, u64)> {
    let mut words = std::collections::BTreeMap::<u32, u64>::new();
    for &p in ports {
        *words.entry(u32::from(p >> 6)).or_default() |= 1u64 << (p & 63);
    }
    words.into_iter().collect()
}

/// What the loader learned about this kernel before loading: the layouts
/// the programs get, and which hooks can work.
struct KernelFacts {
    root: std::path::PathBuf,
    tracepoints: tracefs::KernelLayouts,
    layouts: Layouts,
    sock: SockLayout,
    tcp_sock: TcpSockLayout,
    proc: probe_common::ProcLayout,
    netns: probe_common::NetnsLayout,
    file: probe_common::FileLayout,
}

/// Loads the object and attaches every program of the table
/// ([`crate::kernel::programs::PROGRAMS`]) this host and `opts` allow.
pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    let missing = missing_privileges();
    if !missing.is_empty() {
        return Err(LoadError::NoPrivilege(missing.join(" and ")));
    }
    raise_memlock();
    let facts = kernel_facts(opts)?;
    let mut ebpf = open_object(opts, &facts)?;
    write_ports(&mut ebpf, &opts.ports)?;
    write_watched_processes(&mut ebpf, opts)?;
    if let Some(e) = &opts.endpoints {
        write_endpoints(&mut ebpf, e)?;
        // Before any program runs: nothing on a watched port that is not
        // an endpoint is ever reported.
        set_runtime(&mut ebpf, RUNTIME_ENDPOINTS)?;
    }

    let mut hooks: Vec<Hook> = Vec::new();
    for spec in PROGRAMS.iter().filter(|s| !s.program.is_tc()) {
        let hook = match precondition(spec, opts, &facts) {
            Err(state) => {
                if let HookState::Unavailable(why) = &state {
                    tracing::warn!(
                        "{} unavailable: {why}; the events it feeds are off: {}",
                        spec.attach,
                        spec.feature.what()
                    );
                }
                Hook::new(spec.program, state, None)
            }
            Ok(()) => load_attach(&mut ebpf, spec, &hooks)?,
        };
        if hook.program == Program::KprobeTcpConnect && hook.attached() {
            // The kprobe reports connects; the tracepoint stops doing so.
            set_runtime(&mut ebpf, RUNTIME_KPROBE_CONNECT)?;
        }
        if hook.program == Program::TcpDestroySock && !hook.attached() {
            // The socket table is not LRU: without the destroy hook, the
            // programs free a socket's entry at CLOSE.
            set_runtime(&mut ebpf, RUNTIME_NO_DESTROY)?;
        }
        hooks.push(hook);
    }
    let tc = attach_wire_ledgered(&mut ebpf, opts, &mut hooks)?;
    Ok(Loaded {
        ebpf,
        hooks,
        reset_reasons: facts.tracepoints.reset_reasons,
        tc,
    })
}

/// Locking memory for maps is unlimited on cgroup-accounted kernels; raise
/// the rlimit for older ones and ignore failure.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}

/// Reads tracefs and the kernel's BTF for the layouts the programs get.
fn kernel_facts(opts: &LoadOptions) -> Result<KernelFacts, LoadError> {
    let root = tracefs::ensure_mounted()?;
    let tracepoints = tracefs::kernel_layouts(&root);
    let layouts: Layouts = tracepoints.layouts.unwrap_or(Layouts::ABSENT);
    if layouts.set_state.present == 0 {
        let why = tracepoints
            .unusable
            .iter()
            .find(|(n, _)| n == "inet_sock_set_state")
            .map(|(_, w)| w.clone())
            .unwrap_or_else(|| "unknown".into());
        return Err(LoadError::NoCore(why));
    }
    let vmlinux = btf::Btf::from_file(Path::new(btf::VMLINUX_BTF));
    // The kprobes and the Go uprobes read `struct sock` through these.
    let sock = match &vmlinux {
        Ok(b) => b.sock_layout().unwrap_or_else(|e| {
            tracing::info!("kprobe path and Go uprobes off: struct sock offsets unknown ({e})");
            SockLayout::ABSENT
        }),
        Err(e) => {
            tracing::info!("kprobe path and Go uprobes off: no kernel BTF ({e})");
            SockLayout::ABSENT
        }
    };
    let tcp_sock = match &vmlinux {
        Ok(b) => b.tcp_sock_layout().unwrap_or_else(|e| {
            tracing::info!("the socket's view of received RSTs is off: {e}");
            TcpSockLayout::ABSENT
        }),
        Err(e) => {
            tracing::info!("the socket's view of received RSTs is off: no kernel BTF ({e})");
            TcpSockLayout::ABSENT
        }
    };
    let read_fmt = |cat: &str, name: &str| match tracefs::read_format(&root, cat, name) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("tracepoint {cat}:{name} unreadable: {e}");
            None
        }
    };
    let signal_fmt = read_fmt("signal", "signal_generate");
    let exit_fmt = read_fmt("sched", "sched_process_exit");
    let proc = tracefs::proc_layout(signal_fmt.as_ref(), exit_fmt.as_ref()).unwrap_or_else(|e| {
        tracing::warn!("process lifecycle events are off: {e}");
        probe_common::ProcLayout::ABSENT
    });
    let file = match &vmlinux {
        Ok(b) => b.file_layout().unwrap_or_else(|e| {
            tracing::info!("HTTP/2 inside TLS from Go programs is off: {e}");
            probe_common::FileLayout::ABSENT
        }),
        Err(_) => probe_common::FileLayout::ABSENT,
    };
    let netns = match &vmlinux {
        Ok(b) => b
            .netns_layout()
            .unwrap_or(probe_common::NetnsLayout::ABSENT),
        Err(_) => probe_common::NetnsLayout::ABSENT,
    };
    // Everything needed from our parse of the kernel's BTF is read: free it
    // before aya parses the same BTF for its own relocations, so the two
    // (each a few times the 5 MiB file) are not held at once.
    drop(vmlinux);
    if opts.netns.is_some() && netns.present == 0 {
        return Err(LoadError::NoCore(
            "--netns needs the kernel's BTF (/sys/kernel/btf/vmlinux) to read a socket's namespace"
                .into(),
        ));
    }
    Ok(KernelFacts {
        root,
        tracepoints,
        layouts,
        sock,
        tcp_sock,
        proc,
        netns,
        file,
    })
}

/// The object with this kernel's layouts and the options' sizes written in.
fn open_object(opts: &LoadOptions, k: &KernelFacts) -> Result<Ebpf, LoadError> {
    let flow_table = opts
        .wire
        .as_ref()
        .map(|w| w.flow_table)
        .unwrap_or(probe_common::DEFAULT_FLOW_TABLE);
    let netns_filter: u32 = opts.netns.unwrap_or(0);
    let set_state_direct = u32::from(k.layouts.set_state.is_set_state_direct());
    let has_l3_ifaces: u32 = opts
        .wire
        .as_ref()
        .map(|w| u32::from(w.ifaces.iter().any(|i| i.l2_len != 14)))
        .unwrap_or(0);
    EbpfLoader::new()
        .override_global("LAYOUTS", &k.layouts, true)
        .override_global("SET_STATE_DIRECT", &set_state_direct, true)
        .override_global("SOCK_LAYOUT", &k.sock, true)
        .override_global("TCP_SOCK_LAYOUT", &k.tcp_sock, true)
        .override_global("HAS_L3_IFACES", &has_l3_ifaces, true)
        .override_global("PROC_LAYOUT", &k.proc, true)
        .override_global("NETNS_LAYOUT", &k.netns, true)
        .override_global("NETNS_FILTER", &netns_filter, true)
        .override_global("FILE_LAYOUT", &k.file, true)
        .override_global("AYA_LOG_LEVEL", &opts.kernel_log_level, false)
        .map_max_entries("EVENTS", opts.ringbuf_bytes)
        .map_max_entries("FLOWS", flow_table)
        .map_max_entries("SOCKS", opts.socket_table)
        .load(PROBES)
        .map_err(|e| {
            let release = crate::daemon::kernel_release();
            match &e {
                aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, .. })
                    if name == "EVENTS" && before_ringbuf(&release) =>
                {
                    LoadError::NoRingBuf(release, Box::new(e))
                }
                _ => LoadError::Load(e),
            }
        })
}

/// Writes endpoint mode's resolved endpoints into `ENDPOINTS`.
fn write_endpoints(ebpf: &mut Ebpf, e: &EndpointOptions) -> Result<(), LoadError> {
    let mut m: aya::maps::HashMap<&mut MapData, probe_common::EndpointKey, u8> =
        aya::maps::HashMap::try_from(map_mut(ebpf, "ENDPOINTS")?)
            .map_err(|e| LoadError::Map("ENDPOINTS", e))?;
    for k in e.resolved.keys() {
        m.insert(k, 1, 0)
            .map_err(|e| LoadError::Map("ENDPOINTS", e))?;
    }
    Ok(())
}

/// Takes `ENDPOINTS` out of the object, for the task that keeps it in step
/// with the names.
pub fn take_endpoints(
    ebpf: &mut Ebpf,
) -> Result<aya::maps::HashMap<MapData, probe_common::EndpointKey, u8>, LoadError> {
    let map = take_map(ebpf, "ENDPOINTS")?;
    aya::maps::HashMap::try_from(map).map_err(|e| LoadError::Map("ENDPOINTS", e))
}

/// Turns on the `RUNTIME` switch `slot` (see probe-common's `RUNTIME_*`).
fn set_runtime(ebpf: &mut Ebpf, slot: u32) -> Result<(), LoadError> {
    let mut rt: Array<&mut MapData, u32> =
        Array::try_from(map_mut(ebpf, "RUNTIME")?).map_err(|e| LoadError::Map("RUNTIME", e))?;
    rt.set(slot, 1, 0).map_err(|e| LoadError::Map("RUNTIME", e))
}

fn write_ports(ebpf: &mut Ebpf, ports: &[u16]) -> Result<(), LoadError> {
    let mut map: Array<&mut MapData, u64> =
        Array::try_from(map_mut(ebpf, "PORTS")?).map_err(|e| LoadError::Map("PORTS", e))?;
    for (idx, word) in port_bitmap(ports) {
        debug_assert!(idx < PORT_BITMAP_WORDS);
        map.set(idx, word, 0)
            .map_err(|e| LoadError::Map("PORTS", e))?;
    }
    Ok(())
}

/// Whether the host and the options let `spec` be tried; the hook's state
/// when not.
fn precondition(spec: &Spec, opts: &LoadOptions, k: &KernelFacts) -> Result<(), HookState> {
    match spec.attach {
        Attach::Tracepoint { category, name } if spec.feature == Feature::ProcessLifecycle => {
            let understood = match spec.program {
                Program::SignalGenerate => k.proc.signal_present != 0,
                Program::SchedProcessExit => k.proc.exit_present != 0,
                _ => k.root.join("events").join(category).join(name).exists(),
            };
            if understood {
                Ok(())
            } else {
                Err(HookState::Unavailable(
                    "tracepoint not present in this kernel or its record not understood".into(),
                ))
            }
        }
        Attach::Tracepoint { name, .. } => {
            match k.tracepoints.unusable.iter().find(|(n, _)| n == name) {
                Some((_, why)) => Err(HookState::Unavailable(why.clone())),
                None => Ok(()),
            }
        }
        Attach::Kprobe { .. } if !opts.kprobes => {
            Err(HookState::Standby("disabled by --no-kprobes".into()))
        }
        Attach::Kprobe { .. } if k.sock.present == 0 => Err(HookState::Unavailable(
            "struct sock offsets not found in BTF".into(),
        )),
        Attach::GoUprobes { .. } if !opts.go_uprobes => {
            Err(HookState::Standby("disabled by --no-go-uprobes".into()))
        }
        Attach::GoUprobes { .. } if k.file.present == 0 || k.sock.present == 0 => {
            Err(HookState::Unavailable(
                "the kernel offsets from a task to its sockets are not in BTF".into(),
            ))
        }
        Attach::Kprobe { .. } | Attach::Tc { .. } | Attach::GoUprobes { .. } => Ok(()),
    }
}

/// Loads one tracepoint or kprobe program and attaches it, unless a
/// program it stands in for is already attached. Fails only for a required
/// program; any other failure is the hook's state.
fn load_attach(ebpf: &mut Ebpf, spec: &Spec, earlier: &[Hook]) -> Result<Hook, LoadError> {
    let insns = match load_program(ebpf, spec) {
        Ok(n) => n,
        Err(e) => {
            let why = match spec.kind {
                Kind::KProbe => format!("verifier rejected it: {}", error_chain(&e)),
                _ => error_chain(&e),
            };
            return unavailable(spec, why, None);
        }
    };
    if let Some(primary) = spec.stands_in_for
        && earlier
            .iter()
            .any(|h| h.program == primary && (h.attached() || h.per_binary()))
    {
        let why = format!(
            "loaded and verified; {} is used instead",
            primary.spec().attach
        );
        return Ok(Hook::new(spec.program, HookState::Standby(why), insns));
    }
    if let Attach::GoUprobes { .. } = spec.attach {
        return Ok(Hook::new(
            spec.program,
            HookState::Standby(GO_PER_BINARY.into()),
            insns,
        ));
    }
    let attached = (|| -> Result<(), aya::programs::ProgramError> {
        let p = ebpf
            .program_mut(spec.object_name)
            .ok_or(aya::programs::ProgramError::NotLoaded)?;
        match spec.attach {
            Attach::Tracepoint { category, name } => {
                let p: &mut TracePoint = p.try_into()?;
                p.attach(category, name)?;
            }
            Attach::Kprobe { function } => {
                let p: &mut KProbe = p.try_into()?;
                p.attach(function, 0)?;
            }
            Attach::Tc { .. } | Attach::GoUprobes { .. } => {
                unreachable!("classifiers attach per interface, uprobes per binary")
            }
        }
        Ok(())
    })();
    match attached {
        Ok(()) => Ok(Hook::new(spec.program, HookState::Attached, insns)),
        Err(e) if spec.kind == Kind::KProbe => {
            let why = format!(
                "loaded and verified, but attaching failed (kernel without kprobes?): {}",
                error_chain(&e)
            );
            tracing::info!("{} not used: {why}; tracepoints cover it", spec.attach);
            Ok(Hook::new(spec.program, HookState::Unavailable(why), insns))
        }
        Err(e) => unavailable(spec, error_chain(&e), insns),
    }
}

/// A program that failed: fatal when required, else a warning and its state.
fn unavailable(spec: &Spec, why: String, insns: Option<usize>) -> Result<Hook, LoadError> {
    if spec.required {
        return Err(LoadError::NoCore(why));
    }
    tracing::warn!(
        "{} unavailable: {why}; the events it feeds are off: {}",
        spec.attach,
        spec.feature.what()
    );
    Ok(Hook::new(spec.program, HookState::Unavailable(why), insns))
}

/// Loads (verifies) one program of the table; returns the instructions
/// the verifier accepted, where the kernel says.
fn load_program(
    ebpf: &mut Ebpf,
    spec: &Spec,
) -> Result<Option<usize>, aya::programs::ProgramError> {
    let p = ebpf
        .program_mut(spec.object_name)
        .ok_or(aya::programs::ProgramError::NotLoaded)?;
    let info = match spec.kind {
        Kind::TracePoint => {
            let p: &mut TracePoint = p.try_into()?;
            p.load()?;
            p.info()
        }
        Kind::KProbe => {
            let p: &mut KProbe = p.try_into()?;
            p.load()?;
            p.info()
        }
        Kind::UProbe => {
            let p: &mut UProbe = p.try_into()?;
            p.load()?;
            p.info()
        }
        Kind::Classifier => {
            let p: &mut SchedClassifier = p.try_into()?;
            p.load()?;
            p.info()
        }
    };
    Ok(info
        .ok()
        .and_then(|i| i.verified_instruction_count())
        .map(|n| n as usize))
}

/// The wire observer: cleans up after dead instances, opens the ledger of
/// what it adds, attaches the classifiers. Without `--wire`, both are on
/// standby.
fn attach_wire_ledgered(
    ebpf: &mut Ebpf,
    opts: &LoadOptions,
    hooks: &mut Vec<Hook>,
) -> Result<Ledger, LoadError> {
    let Some(w) = &opts.wire else {
        for p in [Program::TcIngress, Program::TcEgress] {
            hooks.push(Hook::new(
                p,
                HookState::Standby("disabled by --no-wire".into()),
                None,
            ));
        }
        return Ok(Ledger::new(None)?);
    };
    if let Some(dir) = &w.state_dir {
        let c = leftovers::clean_dead(dir);
        if c.filters + c.qdiscs > 0 {
            tracing::info!(
                "cleaned up after {} instance(s) that did not exit cleanly: {} tc filter(s), {} qdisc(s)",
                c.ledgers,
                c.filters,
                c.qdiscs
            );
        }
    }
    let mut tc = Ledger::new(w.state_dir.as_deref()).or_else(|e| {
        tracing::warn!(
            "{e}; a TC filter left by a kill -9 will not be cleaned up at the next start"
        );
        Ledger::new(None)
    })?;
    attach_wire(ebpf, w, hooks, &mut tc)?;
    Ok(tc)
}

/// Whether a kernel release predates BPF ring buffers (Linux 5.8), which
/// every event goes through.
fn before_ringbuf(release: &str) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let v = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    // An unreadable release says nothing.
    v.0 > 0 && v < (5, 8)
}

/// The names as the kernel keeps them: at most 15 bytes, NUL-padded, split
/// into two native-endian u64 halves for the programs' comparison.
pub fn comm_words(name: &str) -> [u64; 2] {
    let mut b = [0u8; 16];
    let n = name.len().min(15);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&b[..8]);
    hi.copy_from_slice(&b[8..]);
    [u64::from_ne_bytes(lo), u64::from_ne_bytes(hi)]
}

/// The watched process names, and the processes already running that are
/// watched: by name, and the owners of watched listeners.
fn write_watched_processes(ebpf: &mut Ebpf, opts: &LoadOptions) -> Result<(), LoadError> {
    {
        let mut names: Array<&mut MapData, [u64; 2]> =
            Array::try_from(map_mut(ebpf, "WATCH_COMM_NAMES")?)
                .map_err(|e| LoadError::Map("WATCH_COMM_NAMES", e))?;
        for (i, n) in opts
            .watch_comms
            .iter()
            .take(probe_common::WATCH_COMMS)
            .enumerate()
        {
            names
                .set(i as u32, comm_words(n), 0)
                .map_err(|e| LoadError::Map("WATCH_COMM_NAMES", e))?;
        }
    }
    let mut watched: HashMap<&mut MapData, u32, u8> =
        HashMap::try_from(map_mut(ebpf, "WATCHED")?).map_err(|e| LoadError::Map("WATCHED", e))?;
    for (pid, why) in
        crate::kernel::procscan::watched_processes(&opts.watch_comms, &opts.ports, opts.netns)
    {
        let _ = watched.insert(pid, why, 0);
    }
    Ok(())
}

fn attach_wire(
    ebpf: &mut Ebpf,
    w: &WireOptions,
    hooks: &mut Vec<Hook>,
    ledger: &mut Ledger,
) -> Result<(), LoadError> {
    {
        let mut l2: HashMap<&mut MapData, u32, u32> = HashMap::try_from(map_mut(ebpf, "IFACE_L2")?)
            .map_err(|e| LoadError::Map("IFACE_L2", e))?;
        for i in &w.ifaces {
            l2.insert(i.index, i.l2_len, 0)
                .map_err(|e| LoadError::Map("IFACE_L2", e))?;
        }
    }
    for spec in PROGRAMS.iter().filter(|s| s.program.is_tc()) {
        let insns = match load_program(ebpf, spec) {
            Ok(n) => n,
            Err(e) => {
                let mut why = error_chain(&e);
                if why.contains("Operation not permitted") {
                    why = format!("needs CAP_NET_ADMIN ({why})");
                }
                tracing::warn!(
                    "{} classifier unavailable: {why}; wire events are off",
                    spec.attach
                );
                hooks.push(Hook::new(spec.program, HookState::Unavailable(why), None));
                continue;
            }
        };
        match &w.netns {
            None => attach_tc(ebpf, w, spec, insns, hooks, ledger),
            Some(path) => {
                // TCX and netlink attach by ifindex in the calling thread's
                // namespace: a thread that entered the chosen one does it.
                let entered = crate::kernel::iface::in_netns(path, || {
                    attach_tc(ebpf, w, spec, insns, hooks, ledger)
                });
                if let Err(e) = entered {
                    let why = format!("cannot enter network namespace {}: {e}", path.display());
                    tracing::warn!(
                        "{} classifier unavailable: {why}; wire events are off",
                        spec.attach
                    );
                    let mut h = Hook::new(spec.program, HookState::Unavailable(why), insns);
                    h.place = Some(format!("(netns {})", path.display()));
                    hooks.push(h);
                }
            }
        }
    }
    Ok(())
}

/// Attaches the loaded classifier `prog` to every interface of `w` in the
/// calling thread's network namespace.
fn attach_tc(
    ebpf: &mut Ebpf,
    w: &WireOptions,
    spec: &Spec,
    insns: Option<usize>,
    hooks: &mut Vec<Hook>,
    ledger: &mut Ledger,
) {
    let (attach_type, what) = match spec.attach {
        Attach::Tc { ingress: true } => (TcAttachType::Ingress, "ingress"),
        _ => (TcAttachType::Egress, "egress"),
    };
    for i in &w.ifaces {
        let place = match &w.netns {
            Some(p) => format!("{} (netns {})", i.name, p.display()),
            None => i.name.clone(),
        };
        let name = format!("{} {place}", spec.attach);
        let p: &mut SchedClassifier =
            match ebpf.program_mut(spec.object_name).map(TryInto::try_into) {
                Some(Ok(p)) => p,
                _ => continue,
            };
        // TCX links (Linux 6.6+) first; the clsact qdisc and a netlink
        // filter otherwise.
        let tcx = match w.attach {
            TcAttach::Netlink => None,
            TcAttach::Auto | TcAttach::Tcx => Some(p.attach_with_options(
                &i.name,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )),
        };
        let result = match tcx {
                Some(Ok(_)) => Ok(()),
                Some(Err(e)) if w.attach == TcAttach::Tcx => Err(error_chain(&e)),
                // A netlink filter and qdisc outlive the process; the ledger
                // and the detach on exit remove them in the daemon's own
                // namespace, where the same ifindex is another interface.
                // TCX links die with their fd, wherever they are.
                Some(Err(e)) if w.netns.is_some() => Err(format!(
                    "{}; in another network namespace only TCX links (Linux 6.6+) are used, not a netlink filter that could outlive drainwatch there",
                    error_chain(&e)
                )),
                None if w.netns.is_some() => Err("--tc-attach netlink: in another network namespace only TCX links (Linux 6.6+) are used, not a netlink filter that could outlive drainwatch there".to_string()),
                Some(Err(_)) | None => attach_netlink(p, i, attach_type, what, ledger),
            };
        let state = match result {
            Ok(()) => HookState::Attached,
            Err(why) => {
                tracing::warn!("{name} unavailable: {why}");
                HookState::Unavailable(why)
            }
        };
        let mut h = Hook::new(spec.program, state, insns);
        h.place = Some(place);
        hooks.push(h);
    }
}

/// Attaches `p` as a netlink filter on `dev`, creating the clsact qdisc if
/// needed; both are written to the ledger before the next step can fail.
fn attach_netlink(
    p: &mut SchedClassifier,
    iface: &Iface,
    attach_type: TcAttachType,
    direction: &str,
    ledger: &mut Ledger,
) -> Result<(), String> {
    let dev = iface.name.as_str();
    if !ledger.qdiscs().iter().any(|q| q == dev) {
        ledger.adding_qdisc(dev).map_err(|e| e.to_string())?;
        match tc::qdisc_add_clsact(dev) {
            Ok(()) => {}
            Err(e) => {
                ledger.qdisc_not_added(dev).map_err(|e| e.to_string())?;
                if !e.to_string().contains("exists") {
                    return Err(format!("adding the clsact qdisc: {}", error_chain(&e)));
                }
            }
        }
    }
    let id = p
        .attach_with_options(
            dev,
            attach_type,
            TcAttachOptions::Netlink(NlOptions::default()),
        )
        .map_err(|e| error_chain(&e))?;
    let link = p.take_link(id).map_err(|e| error_chain(&e))?;
    let filter = TcFilter {
        iface: dev.to_string(),
        ifindex: iface.index,
        direction: direction.to_string(),
        priority: link.priority().map_err(|e| error_chain(&e))?,
        handle: u32::from(link.handle().map_err(|e| error_chain(&e))?),
    };
    ledger
        .added_filter(filter, Some(link))
        .map_err(|e| e.to_string())
}

/// A map of the object by name; missing means the object and this code disagree.
fn map_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::maps::Map, LoadError> {
    ebpf.map_mut(name).ok_or(LoadError::Map(
        name,
        aya::maps::MapError::InvalidName { name: name.into() },
    ))
}

/// Takes a map out of the object, for a task that owns it.
fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::Map(
        name,
        aya::maps::MapError::InvalidName { name: name.into() },
    ))
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    // Verifier logs are long: their start and the lines where the verifier
    // gave up say enough for a log line, and an empty one says nothing.
    if let Some(cut) = s.find("Verifier output:") {
        let log = s[cut + "Verifier output:".len()..].trim().to_string();
        s.truncate(cut);
        if log.is_empty() {
            s = s.trim_end_matches(['.', ' ']).to_string();
        } else {
            s.push_str("Verifier output: ");
            s.push_str(&verifier_summary(&log));
        }
    }
    s
}

/// The first 200 bytes of a verifier log, the last three lines before its
/// statistics (the instruction it rejected and why: 5.10 prints the
/// statistics after the reason) and how many instructions it processed.
fn verifier_summary(log: &str) -> String {
    const HEAD: usize = 200;
    const TAIL_LINES: usize = 3;
    if log.len() <= 3 * HEAD {
        return log.to_string();
    }
    let mut head_end = HEAD;
    while !log.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let lines: Vec<&str> = log.lines().collect();
    let stat = |l: &&str| {
        l.starts_with("verification time")
            || l.starts_with("stack depth")
            || l.starts_with("processed ")
    };
    let end = lines.iter().rposition(|l| !stat(l)).map_or(0, |i| i + 1);
    let tail = lines[end.saturating_sub(TAIL_LINES)..end].join("\n");
    let mut out = format!("{} ... {tail}", &log[..head_end]);
    if let Some(p) = lines[end..].iter().find(|l| l.starts_with("processed ")) {
        out.push('\n');
        out.push_str(p);
    }
    out
}

/// The event ring buffer, taken out of the object for the reader task.
pub fn take_events(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>, LoadError> {
    let map = take_map(ebpf, "EVENTS")?;
    RingBuf::try_from(map).map_err(|e| LoadError::Map("EVENTS", e))
}

/// Kernel-side loss counters, taken out for the poller.
pub fn take_lost(ebpf: &mut Ebpf) -> Result<PerCpuArray<MapData, u64>, LoadError> {
    let map = take_map(ebpf, "LOST")?;
    PerCpuArray::try_from(map).map_err(|e| LoadError::Map("LOST", e))
}

/// The flow table, taken out for the occupancy poller.
pub fn take_flows(
    ebpf: &mut Ebpf,
) -> Result<HashMap<MapData, probe_common::FlowKey, probe_common::Flow>, LoadError> {
    let map = take_map(ebpf, "FLOWS")?;
    HashMap::try_from(map).map_err(|e| LoadError::Map("FLOWS", e))
}

/// The wire observer's counters, taken out for the poller.
pub fn take_wire_stats(ebpf: &mut Ebpf) -> Result<PerCpuArray<MapData, u64>, LoadError> {
    let map = take_map(ebpf, "WIRE_STATS")?;
    PerCpuArray::try_from(map).map_err(|e| LoadError::Map("WIRE_STATS", e))
}

/// One slot of a per-CPU counter array, summed over CPUs.
pub fn percpu_total(lost: &PerCpuArray<MapData, u64>, slot: u32) -> u64 {
    lost.get(&slot, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capabilities_are_named() {
        let bpf = 1u64 << 39;
        let perfmon = 1u64 << 38;
        assert!(
            missing_from(1 << 21).is_empty(),
            "CAP_SYS_ADMIN covers both"
        );
        assert!(missing_from(bpf | perfmon).is_empty());
        assert_eq!(missing_from(bpf), ["CAP_PERFMON"]);
        assert_eq!(missing_from(perfmon), ["CAP_BPF"]);
        assert_eq!(missing_from(0), ["CAP_BPF", "CAP_PERFMON"]);
        let e = LoadError::NoPrivilege(missing_from(perfmon).join(" and "));
        assert!(e.to_string().contains("this process lacks CAP_BPF."), "{e}");
    }

    #[test]
    fn verifier_logs_keep_their_start_and_reason() {
        let short = "the BPF_PROG_LOAD syscall returned Permission denied (os error 13). Verifier output: R1 invalid mem access";
        assert_eq!(error_chain(&std::io::Error::other(short)), short);
        let mut long = String::from("x. Verifier output: ");
        for i in 0..100 {
            long.push_str(&format!("{i}: (bf) r1 = r6\n"));
        }
        long.push_str("invalid read from stack R10 off=-184 size=8\nverification time 609534 usec\nstack depth 184+0+32\nprocessed 5744 insns (limit 1000000)\n");
        let e = error_chain(&std::io::Error::other(long));
        assert!(
            e.starts_with("x. Verifier output: 0: (bf) r1 = r6\n1:"),
            "{e}"
        );
        assert!(
            e.ends_with(
                "98: (bf) r1 = r6\n99: (bf) r1 = r6\ninvalid read from stack R10 off=-184 size=8\nprocessed 5744 insns (limit 1000000)"
            ),
            "{e}"
        );
        assert!(e.contains(" ... "), "{e}");
        assert!(e.len() < 400, "{e}");
        let empty = error_chain(&std::io::Error::other("load failed. Verifier output: "));
        assert_eq!(empty, "load failed");
    }

    #[test]
    fn kernels_before_5_8_have_no_ring_buffer() {
        assert!(before_ringbuf("5.4.0-200-generic"));
        assert!(before_ringbuf("4.19.0-27-cloud-amd64"));
        assert!(!before_ringbuf("5.8.0"));
        assert!(!before_ringbuf("5.10.0-46-cloud-amd64"));
        assert!(!before_ringbuf("6.12.118+deb13-cloud-amd64"));
        assert!(!before_ringbuf("unknown"));
        let e = LoadError::NoRingBuf(
            "5.4.0".into(),
            Box::new(aya::EbpfError::MapError(aya::maps::MapError::CreateError {
                name: "EVENTS".into(),
                io_error: std::io::Error::from_raw_os_error(22),
            })),
        );
        let text = error_chain(&e);
        assert!(
            text.contains("need Linux 5.8 or newer, this is 5.4.0"),
            "{text}"
        );
        assert!(text.contains("failed to create map `EVENTS`"), "{text}");
    }

    #[test]
    fn bitmap_sets_one_bit_per_port() {
        let words = port_bitmap(&[6443, 443, 0, 65535, 444]);
        assert_eq!(
            words,
            vec![
                (0, 1),
                (443 >> 6, (1 << (443 & 63)) | (1 << (444 & 63))),
                (6443 >> 6, 1 << (6443 & 63)),
                (1023, 1 << 63),
            ]
        );
    }
}
