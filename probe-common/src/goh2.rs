//! HTTP/2 GOAWAY and RST_STREAM inside TLS, from uprobes on Go's own HTTP/2
//! code (`golang.org/x/net/http2` and the copy bundled in `net/http`): the
//! configuration the daemon gives the `go_*` programs per Go binary.

/// Which hooked function a probe sits in ([`GoProbe::hook`]).
pub mod go_hook {
    /// `(*Framer).WriteGoAway(maxStreamID, code, debugData)`: a GOAWAY sent.
    pub const WRITE_GOAWAY: u8 = 0;
    /// `(*Framer).WriteRSTStream(streamID, code)`: an RST_STREAM sent.
    pub const WRITE_RST_STREAM: u8 = 1;
    /// `(*serverConn).processGoAway(f)`: a GOAWAY received by a server.
    pub const SERVER_GOAWAY: u8 = 2;
    /// `(*serverConn).processResetStream(f)`: an RST_STREAM received by a server.
    pub const SERVER_RST_STREAM: u8 = 3;
    /// `(*clientConnReadLoop).processGoAway(f)`: a GOAWAY received by a client.
    pub const CLIENT_GOAWAY: u8 = 4;
    /// `(*clientConnReadLoop).processResetStream(f)`: an RST_STREAM received by a client.
    pub const CLIENT_RST_STREAM: u8 = 5;
    /// Number of hooks.
    pub const COUNT: u8 = 6;
}

/// One attached probe, keyed in `GO_PROBES` by the address the probe sits at
/// in the process (the link-time address for non-PIE binaries; one entry per
/// process for PIE ones).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoProbe {
    /// The probe's link-time address: `ip - link_va` is the load bias.
    pub link_va: u64,
    /// Index of the binary's [`GoLayout`] in `GO_LAYOUTS` and key part in `GO_TYPES`.
    pub binary: u32,
    /// One of [`go_hook`].
    pub hook: u8,
    /// 1 for the copy bundled in `net/http`, 0 for `golang.org/x/net/http2`.
    pub bundle: u8,
    pub _pad: [u8; 2],
}

impl GoProbe {
    /// An empty cookie slot (`link_va` 0: not configured).
    pub const UNSET: GoProbe = GoProbe {
        link_va: 0,
        binary: 0,
        hook: 0,
        bundle: 0,
        _pad: [0; 2],
    };
}

/// Key of `GO_TYPES`: a method's link-time address in a binary.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GoTypeKey {
    pub binary: u32,
    pub _pad: u32,
    /// The link-time entry of the concrete type's first interface method
    /// (`Read` for `io.Reader`, `Close` for `net.Conn`), as found in an
    /// itab's `fun[0]` minus the load bias.
    pub pc: u64,
}

/// What to do with an interface value whose concrete type is known.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoTypeStep {
    /// 1: the value is a `*net.TCPConn`: the socket's fd comes next.
    pub terminal: u16,
    /// Otherwise: the wrapped interface value sits at this offset in the
    /// pointed-to struct (`tls.Conn.conn`, `bufio.Reader.rd`, ...).
    pub next_off: u16,
    pub _pad: u32,
}

/// Struct offsets in a Go binary's memory, per Go (and x/net) version.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoLayout {
    /// `Framer.r` (io.Reader): where a sent frame's connection is found.
    pub framer_r: u16,
    /// `serverConn.conn` (net.Conn).
    pub server_conn: u16,
    /// `clientConnReadLoop.cc` (*ClientConn).
    pub read_loop_cc: u16,
    /// `ClientConn.tconn` (net.Conn).
    pub client_tconn: u16,
    /// `net.TCPConn` -> `conn.fd` (*netFD).
    pub tcp_conn_fd: u16,
    /// `netFD.pfd.Sysfd`.
    pub net_fd_sysfd: u16,
    /// `GoAwayFrame.LastStreamID`, `.ErrCode`, `.debugData` (ptr, then len).
    pub goaway_last: u16,
    pub goaway_code: u16,
    pub goaway_debug: u16,
    /// `FrameHeader.StreamID`, `RSTStreamFrame.ErrCode`.
    pub frame_stream: u16,
    pub rst_code: u16,
    /// itab -> `fun[0]`.
    pub itab_fun0: u16,
}

/// Offsets in the kernel from the current task to a file descriptor's
/// socket, from BTF: `task->files->fdt->fd[n]->private_data`, checked by
/// `socket->file == file`, then `socket->sk`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLayout {
    pub present: u16,
    pub task_files: u16,
    pub files_fdt: u16,
    pub fdt_max_fds: u16,
    pub fdt_fd: u16,
    pub file_private_data: u16,
    pub socket_file: u16,
    pub socket_sk: u16,
}

impl FileLayout {
    pub const ABSENT: FileLayout = FileLayout {
        present: 0,
        task_files: 0,
        files_fdt: 0,
        fdt_max_fds: 0,
        fdt_fd: 0,
        file_private_data: 0,
        socket_file: 0,
        socket_sk: 0,
    };
}

/// Most Go binaries configured at once (`GO_LAYOUTS` entries).
pub const GO_MAX_BINARIES: u32 = 64;
/// Cookie slots (`GO_COOKIES`): one per hook of each binary, the cookie
/// being `binary * COUNT + hook index`.
pub const GO_MAX_COOKIES: u32 = GO_MAX_BINARIES * 12;
/// Most probe addresses (`GO_PROBES` entries).
pub const GO_MAX_PROBES: u32 = 4096;
/// Most method addresses (`GO_TYPES` entries).
pub const GO_MAX_TYPES: u32 = 1024;
/// Most interface hops from a frame to its `*net.TCPConn`.
pub const GO_MAX_HOPS: u32 = 5;
/// Bytes of GOAWAY debug data the event carries (in `aux[0..3]`; `aux[3]`
/// holds an unattributed event's type address).
pub const GO_DEBUG_BYTES: usize = 24;

/// Slots of the `GO_STATS` per-CPU array: what the hooks could not report.
pub mod go_stat {
    /// A probe hit at an address the daemon had not configured yet (a PIE
    /// process that started after the binary was attached).
    pub const UNCONFIGURED: u32 = 0;
    /// A frame on a connection whose type chain was not followed (the
    /// event is still sent, unattributed, with the type's method address).
    pub const UNATTRIBUTED: u32 = 1;
    /// A frame on a socket of an unwatched port (e.g. a gRPC connection).
    pub const UNWATCHED: u32 = 2;
    /// A frame written to a connection already closed (its fd is -1, or no
    /// longer a socket): it never reaches the wire, so it is not reported.
    pub const CLOSED_CONNECTION: u32 = 3;
    /// RST_STREAM sent, by error code (`RST_SENT_BASE + min(code, 15)`):
    /// only REFUSED_STREAM is reported as an event; the others (CANCEL at
    /// every watch teardown) are counted here.
    pub const RST_SENT_BASE: u32 = 4;
    /// RST_STREAM received, by error code.
    pub const RST_RECEIVED_BASE: u32 = 20;
}
/// Number of slots in `GO_STATS`.
pub const GO_STAT_SLOTS: u32 = 36;
/// HTTP/2 error code REFUSED_STREAM (RFC 9113 section 7).
pub const H2_REFUSED_STREAM: u32 = 7;

#[cfg(feature = "user")]
unsafe impl aya::Pod for GoProbe {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for GoTypeKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for GoTypeStep {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for GoLayout {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FileLayout {}
