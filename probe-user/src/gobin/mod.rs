//! gobin: where to hook a Go executable's HTTP/2 code, from the binary
//! alone. Release builds are stripped (`-ldflags=-s -w`: no ELF symbols, no
//! DWARF), so functions are found in Go's own function table (pclntab),
//! which the runtime needs and which every Go binary keeps; the Go version
//! comes from `.go.buildinfo`. Pure: bytes in, a [`Plan`] out (fuzzed).
//!
//! Blind spots, by design:
//! - Go before 1.18 (no register ABI before 1.17, an older table before
//!   1.18) is refused.
//! - A hooked function inlined into its callers (a PGO build could do it)
//!   is never called out of line: its probe never fires. The function's
//!   out-of-line copy is still found, so this is not detected here.
//! - amd64 only (registers, prologue decoding).

pub mod buildinfo;
pub mod pclntab;
pub mod prologue;

use object::{Object, ObjectKind, ObjectSection, ObjectSegment, ReadRef};
use probe_common::{GoLayout, go_hook};

/// Why a binary cannot be hooked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GobinError {
    #[error("not an ELF executable: {0}")]
    Elf(String),
    #[error("not a 64-bit x86 executable")]
    Arch,
    #[error("no Go function table (.gopclntab): not a Go program, or one built by Go before 1.18")]
    NoPclntab,
    #[error("Go function table: {0}")]
    Pclntab(String),
    #[error("the text start of this position-independent binary is not found")]
    NoTextStart,
    #[error("built by {0}: Go before 1.18 is not supported")]
    OldGo(String),
    #[error("no HTTP/2 functions: this Go program does not use HTTP/2")]
    NoHttp2,
}

/// Which copy of Go's HTTP/2 code a hook is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// `golang.org/x/net/http2` (kube-apiserver, client-go).
    XNet,
    /// The copy bundled in `net/http` (plain `net/http` programs).
    Bundle,
}

impl Copy {
    pub fn as_str(self) -> &'static str {
        match self {
            Copy::XNet => "x/net",
            Copy::Bundle => "net/http",
        }
    }
}

/// One function to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// One of `go_hook`.
    pub hook: u8,
    pub copy: Copy,
    /// The function's name in the table.
    pub name: String,
    /// Its entry (link-time address).
    pub entry: u64,
    /// Where the probe goes: the first instruction after the stack check
    /// (link-time address), so it fires once per call (see [`prologue`]).
    pub probe_va: u64,
    /// `probe_va` as an offset in the file, for attaching.
    pub file_offset: u64,
}

/// A connection type the attribution walk knows, by the link-time address
/// of one of its methods (what an itab's first entry holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnType {
    pub pc: u64,
    pub name: String,
    /// `None`: a `*net.TCPConn` (the end); else the offset of the wrapped
    /// interface value.
    pub next_off: Option<u16>,
}

/// Everything the daemon needs to hook one binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub go_version: Option<String>,
    pub xnet_version: Option<String>,
    /// Position-independent: probe addresses differ per process.
    pub pie: bool,
    pub hooks: Vec<Hook>,
    /// Functions present but not hooked, and why (e.g. an unknown prologue).
    pub skipped: Vec<(String, String)>,
    pub conn_types: Vec<ConnType>,
    pub layout: GoLayout,
    /// The table's text start (for naming unknown types).
    pub text_start: u64,
    /// Where the file's first byte is meant to be mapped (PIE: the load
    /// bias is the mapped address minus this).
    pub load_base: u64,
}

/// What a hook reports, for people.
pub fn hook_label(hook: u8) -> &'static str {
    match hook {
        go_hook::WRITE_GOAWAY => "GOAWAY sent",
        go_hook::WRITE_RST_STREAM => "RST_STREAM sent",
        go_hook::SERVER_GOAWAY => "GOAWAY received by a server",
        go_hook::SERVER_RST_STREAM => "RST_STREAM received by a server",
        go_hook::CLIENT_GOAWAY => "GOAWAY received by a client",
        go_hook::CLIENT_RST_STREAM => "RST_STREAM received by a client",
        _ => "unknown hook",
    }
}

impl Plan {
    /// The hooks in one line: `GOAWAY sent [x/net, net/http]; ...`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (hook, _, _) in HOOKS {
            let copies: Vec<&str> = self
                .hooks
                .iter()
                .filter(|h| h.hook == *hook)
                .map(|h| h.copy.as_str())
                .collect();
            if !copies.is_empty() {
                parts.push(format!("{} [{}]", hook_label(*hook), copies.join(", ")));
            }
        }
        parts.join("; ")
    }
}

/// The hooked functions: (hook, x/net name, bundle name).
pub const HOOKS: &[(u8, &str, &str)] = &[
    (
        go_hook::WRITE_GOAWAY,
        "golang.org/x/net/http2.(*Framer).WriteGoAway",
        "net/http.(*http2Framer).WriteGoAway",
    ),
    (
        go_hook::WRITE_RST_STREAM,
        "golang.org/x/net/http2.(*Framer).WriteRSTStream",
        "net/http.(*http2Framer).WriteRSTStream",
    ),
    (
        go_hook::SERVER_GOAWAY,
        "golang.org/x/net/http2.(*serverConn).processGoAway",
        "net/http.(*http2serverConn).processGoAway",
    ),
    (
        go_hook::SERVER_RST_STREAM,
        "golang.org/x/net/http2.(*serverConn).processResetStream",
        "net/http.(*http2serverConn).processResetStream",
    ),
    (
        go_hook::CLIENT_GOAWAY,
        "golang.org/x/net/http2.(*clientConnReadLoop).processGoAway",
        "net/http.(*http2clientConnReadLoop).processGoAway",
    ),
    (
        go_hook::CLIENT_RST_STREAM,
        "golang.org/x/net/http2.(*clientConnReadLoop).processResetStream",
        "net/http.(*http2clientConnReadLoop).processResetStream",
    ),
];

/// Connection types between a frame and its socket: (method, next offset;
/// `None` = `*net.TCPConn`). Both `Read` (an `io.Reader` view) and `Close`
/// (a `net.Conn` view) name the type, whichever the itab starts with.
pub const CONN_TYPES: &[(&str, Option<u16>)] = &[
    // tls.Conn{conn net.Conn; ...}
    ("crypto/tls.(*Conn).Read", Some(0)),
    ("crypto/tls.(*Conn).Close", Some(0)),
    // bufio.Reader{buf []byte; rd io.Reader; ...}: the client's Framer reads through it.
    ("bufio.(*Reader).Read", Some(24)),
    // client-go's certificate rotation wraps every connection:
    // closableConn{onClose func(); net.Conn}.
    (
        "k8s.io/client-go/util/connrotation.(*closableConn).Read",
        Some(8),
    ),
    (
        "k8s.io/client-go/util/connrotation.(*closableConn).Close",
        Some(8),
    ),
    ("net.(*TCPConn).Read", None),
    ("net.(*TCPConn).Close", None),
];

/// The struct offsets of Go's HTTP/2, TLS and net code. One row: every
/// offset here is the same from Go 1.18 to 1.24 and x/net from 2022 to
/// today; the tests check it on real builds of each supported Go (a wrong
/// offset gives no connection or a wrong one, against tshark's truth).
pub const LAYOUT: GoLayout = GoLayout {
    framer_r: 0,
    server_conn: 16,
    read_loop_cc: 0,
    client_tconn: 8,
    tcp_conn_fd: 0,
    net_fd_sysfd: 16,
    goaway_last: 12,
    goaway_code: 16,
    goaway_debug: 24,
    frame_stream: 8,
    rst_code: 12,
    itab_fun0: 24,
};

fn min_go_ok(v: &str) -> bool {
    // "go1.22.12", "go1.24rc1", "devel ...": refuse only what is known old.
    let Some(rest) = v.strip_prefix("go1.") else {
        return true;
    };
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    minor.parse::<u32>().map(|m| m >= 18).unwrap_or(true)
}

/// The file offset of link-time address `va`, from the loadable segments.
fn file_offset<'d, R: ReadRef<'d>>(file: &object::File<'d, R>, va: u64) -> Option<u64> {
    file.segments().find_map(|s| {
        let (off, size) = s.file_range();
        let start = s.address();
        (va >= start && va - start < size).then(|| off + (va - start))
    })
}

/// The bytes at link-time address `va` (at most `len`, fewer at the end of
/// its segment's file data). Only that range is read: from a file through
/// a [`object::ReadCache`], the whole text segment is never loaded.
fn bytes_at<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    va: u64,
    len: usize,
) -> Option<&'d [u8]> {
    file.segments().find_map(|s| {
        let start = s.address();
        let (_, size) = s.file_range();
        let off = va.checked_sub(start)?;
        if off >= size {
            return None;
        }
        let n = (len as u64).min(size - off);
        s.data_range(va, n).ok().flatten()
    })
}

/// The table's text start: the header's value, or in a PIE file (where the
/// loader writes it through a relative relocation) that relocation's addend.
fn text_start<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    header_va: u64,
    header_value: u64,
) -> Option<u64> {
    if header_value != 0 {
        return Some(header_value);
    }
    let field = header_va + 24;
    file.dynamic_relocations()?.find_map(|(off, r)| {
        let relative = matches!(
            r.flags(),
            object::RelocationFlags::Elf {
                r_type: object::elf::R_X86_64_RELATIVE
            }
        );
        (off == field && relative).then(|| r.addend() as u64)
    })
}

/// Reads a Go executable and plans its hooks.
pub fn plan(data: &[u8]) -> Result<Plan, GobinError> {
    plan_in(data)
}

/// Plans the hooks of the Go executable at `path`, reading only what the
/// plan needs (ELF headers, build info, the function table, a few bytes
/// per hooked function) instead of the whole file: a release
/// kube-apiserver is over 100 MB, and reading it whole would be that much
/// of the daemon's memory for a moment, near a pod's memory limit.
pub fn plan_file(path: &std::path::Path) -> Result<Plan, GobinError> {
    let f = std::fs::File::open(path)
        .map_err(|e| GobinError::Elf(format!("{}: {e}", path.display())))?;
    let cache = object::ReadCache::new(f);
    plan_in(&cache)
}

fn plan_in<'d, R: ReadRef<'d>>(data: R) -> Result<Plan, GobinError> {
    let file = object::File::parse(data).map_err(|e| GobinError::Elf(e.to_string()))?;
    if file.architecture() != object::Architecture::X86_64 {
        return Err(GobinError::Arch);
    }
    let pie = match file.kind() {
        ObjectKind::Executable => false,
        ObjectKind::Dynamic => true,
        k => return Err(GobinError::Elf(format!("{k:?} object, not an executable"))),
    };
    let info = file
        .section_by_name(".go.buildinfo")
        .and_then(|s| s.data().ok())
        .and_then(buildinfo::parse);
    if let Some(i) = &info
        && !min_go_ok(&i.go_version)
    {
        return Err(GobinError::OldGo(i.go_version.clone()));
    }
    let section = file
        .section_by_name(".gopclntab")
        .or_else(|| file.section_by_name(".data.rel.ro.gopclntab"))
        .ok_or(GobinError::NoPclntab)?;
    let table_data = section
        .data()
        .map_err(|e| GobinError::Pclntab(e.to_string()))?;
    let table = pclntab::Pclntab::parse(table_data)?;
    let text =
        text_start(&file, section.address(), table.text_start).ok_or(GobinError::NoTextStart)?;

    let mut names: Vec<&str> = Vec::new();
    for (_, x, b) in HOOKS {
        names.push(x);
        names.push(b);
    }
    names.extend(CONN_TYPES.iter().map(|(n, _)| *n));
    let found = table.find(&names);

    let mut hooks = Vec::new();
    let mut skipped = Vec::new();
    for (i, (hook, x, b)) in HOOKS.iter().enumerate() {
        for (j, (name, copy)) in [(x, Copy::XNet), (b, Copy::Bundle)].into_iter().enumerate() {
            let Some(off) = found[2 * i + j] else {
                continue;
            };
            let entry = text + u64::from(off);
            let code = bytes_at(&file, entry, 16).unwrap_or(&[]);
            let Some(skip) = prologue::after_stack_check(code) else {
                skipped.push((
                    name.to_string(),
                    format!("its first instructions are not a known stack check ({code:02x?})"),
                ));
                continue;
            };
            let probe_va = entry + skip as u64;
            let Some(file_offset) = file_offset(&file, probe_va) else {
                skipped.push((name.to_string(), "not in a loadable segment".into()));
                continue;
            };
            hooks.push(Hook {
                hook: *hook,
                copy,
                name: name.to_string(),
                entry,
                probe_va,
                file_offset,
            });
        }
    }
    if hooks.is_empty() && skipped.is_empty() {
        return Err(GobinError::NoHttp2);
    }
    let base = 2 * HOOKS.len();
    let conn_types = CONN_TYPES
        .iter()
        .enumerate()
        .filter_map(|(i, (name, next_off))| {
            found[base + i].map(|off| ConnType {
                pc: text + u64::from(off),
                name: name.to_string(),
                next_off: *next_off,
            })
        })
        .collect();
    Ok(Plan {
        go_version: info.as_ref().map(|i| i.go_version.clone()),
        xnet_version: info.and_then(|i| i.xnet_version),
        pie,
        hooks,
        skipped,
        conn_types,
        layout: LAYOUT,
        text_start: text,
        load_base: file
            .segments()
            .find(|s| s.file_range().0 == 0)
            .map(|s| s.address())
            .unwrap_or(0),
    })
}

/// The name of the function at link-time address `pc` (to name a
/// connection type the walk does not know).
pub fn function_name(data: &[u8], pc: u64) -> Option<String> {
    let file = object::File::parse(data).ok()?;
    let section = file
        .section_by_name(".gopclntab")
        .or_else(|| file.section_by_name(".data.rel.ro.gopclntab"))?;
    let table = pclntab::Pclntab::parse(section.data().ok()?).ok()?;
    let text = text_start(&file, section.address(), table.text_start)?;
    let off = u32::try_from(pc.checked_sub(text)?).ok()?;
    table
        .name_at(off)
        .map(|n| String::from_utf8_lossy(n).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions() {
        assert!(min_go_ok("go1.18"));
        assert!(min_go_ok("go1.24.4"));
        assert!(min_go_ok("devel go1.25-abc"));
        assert!(!min_go_ok("go1.17.13"));
        assert!(!min_go_ok("go1.9"));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(plan(b"not an elf"), Err(GobinError::Elf(_))));
        assert!(matches!(plan(&[]), Err(GobinError::Elf(_))));
    }
}
