//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): just
//! enough to find byte offsets of struct members, including members nested
//! in anonymous structs and unions. The kprobe programs get a raw
//! `struct sock *`, and these offsets (not hard-coded ones) let them read it.

use std::{collections::HashMap, path::Path};

use probe_common::SockLayout;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: not BTF data (bad magic or header)")]
    BadHeader(String),
    #[error("{0}: truncated at byte {1}")]
    Truncated(String, usize),
    #[error("{0}: unknown BTF kind {1} at type id {2}")]
    UnknownKind(String, u32, u32),
    #[error("{0}: no struct named `{1}`")]
    NoStruct(String, String),
    #[error("{0}: struct `{1}` has no member `{2}`")]
    NoMember(String, String, String),
}

#[derive(Debug, Clone)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name_off: u32,
    kind: u32,
    /// Referenced type for modifiers and typedefs.
    target: u32,
    members: Vec<Member>,
    /// Enumerators (name offset, value) for enums.
    enumerators: Vec<(u32, i64)>,
}

/// Parsed BTF types and strings.
pub struct Btf {
    source: String,
    strings: Vec<u8>,
    /// Index 0 is the implicit `void`.
    types: Vec<Type>,
}

fn u32_at(d: &[u8], off: usize, src: &str) -> Result<u32, BtfError> {
    d.get(off..off + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| BtfError::Truncated(src.to_string(), off))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Btf::parse(&path.display().to_string(), &data)
    }

    /// Parses little-endian BTF; `source` names the input in errors.
    pub fn parse(source: &str, d: &[u8]) -> Result<Btf, BtfError> {
        let bad = || BtfError::BadHeader(source.to_string());
        if d.len() < 24 || u16::from_le_bytes([d[0], d[1]]) != MAGIC {
            return Err(bad());
        }
        let hdr_len = u32_at(d, 4, source)? as usize;
        let type_off = u32_at(d, 8, source)? as usize;
        let type_len = u32_at(d, 12, source)? as usize;
        let str_off = u32_at(d, 16, source)? as usize;
        let str_len = u32_at(d, 20, source)? as usize;
        let types_start = hdr_len.checked_add(type_off).ok_or_else(bad)?;
        let types_end = types_start.checked_add(type_len).ok_or_else(bad)?;
        let str_start = hdr_len.checked_add(str_off).ok_or_else(bad)?;
        let str_end = str_start.checked_add(str_len).ok_or_else(bad)?;
        if types_end > d.len() || str_end > d.len() {
            return Err(BtfError::Truncated(source.to_string(), d.len()));
        }
        let strings = d[str_start..str_end].to_vec();
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            target: 0,
            members: Vec::new(),
            enumerators: Vec::new(),
        }];
        let mut off = types_start;
        while off < types_end {
            let id = types.len() as u32;
            let name_off = u32_at(d, off, source)?;
            let info = u32_at(d, off + 4, source)?;
            let size_or_type = u32_at(d, off + 8, source)?;
            off += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let mut enumerators = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = off + i * 12;
                        let raw = u32_at(d, m + 8, source)?;
                        members.push(Member {
                            name_off: u32_at(d, m, source)?,
                            type_id: u32_at(d, m + 4, source)?,
                            bit_offset: if kind_flag { raw & 0xff_ffff } else { raw },
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM => {
                    for i in 0..vlen {
                        let e = off + i * 8;
                        let v = u32_at(d, e + 4, source)? as i32;
                        enumerators.push((u32_at(d, e, source)?, i64::from(v)));
                    }
                    vlen * 8
                }
                KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                2 | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | 16
                | KIND_TYPE_TAG => 0,
                other => return Err(BtfError::UnknownKind(source.to_string(), other, id)),
            };
            off += extra;
            if off > types_end {
                return Err(BtfError::Truncated(source.to_string(), off));
            }
            types.push(Type {
                name_off,
                kind,
                target: size_or_type,
                members,
                enumerators,
            });
        }
        Ok(Btf {
            source: source.to_string(),
            strings,
            types,
        })
    }

    fn name(&self, off: u32) -> &str {
        let start = off as usize;
        let Some(rest) = self.strings.get(start..) else {
            return "";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.target
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offsets of every named member of struct `name`, with members of
    /// anonymous nested structs and unions flattened in.
    pub fn member_offsets(&self, name: &str) -> Result<HashMap<String, u32>, BtfError> {
        let id = self
            .types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == name)
            .ok_or_else(|| BtfError::NoStruct(self.source.clone(), name.to_string()))?;
        let mut out = HashMap::new();
        self.collect(id as u32, 0, &mut out, 0);
        Ok(out)
    }

    fn collect(&self, id: u32, base_bits: u32, out: &mut HashMap<String, u32>, depth: u32) {
        let Some(t) = self.types.get(id as usize) else {
            return;
        };
        if depth > 8 {
            return;
        }
        for m in &t.members {
            let bits = base_bits + m.bit_offset;
            let n = self.name(m.name_off);
            if n.is_empty() {
                let inner = self.resolve(m.type_id);
                if let Some(it) = self.types.get(inner as usize)
                    && matches!(it.kind, KIND_STRUCT | KIND_UNION)
                {
                    self.collect(inner, bits, out, depth + 1);
                }
            } else {
                out.entry(n.to_string()).or_insert(bits / 8);
            }
        }
    }

    /// The value of enumerator `name` in any enum.
    pub fn enum_value(&self, name: &str) -> Option<i64> {
        self.types
            .iter()
            .filter(|t| t.kind == KIND_ENUM)
            .flat_map(|t| t.enumerators.iter())
            .find(|(n, _)| self.name(*n) == name)
            .map(|(_, v)| *v)
    }

    /// Byte offset of `path` (member names, descending through named and
    /// anonymous nested structs) inside struct `root`.
    pub fn path_offset(&self, root: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut id = self
            .types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == root)
            .ok_or_else(|| BtfError::NoStruct(self.source.clone(), root.to_string()))?
            as u32;
        let mut bits = 0u32;
        for (i, part) in path.iter().enumerate() {
            let (member_bits, member_type) = self.find_member(id, part, 0).ok_or_else(|| {
                BtfError::NoMember(self.source.clone(), root.to_string(), path[..=i].join("."))
            })?;
            bits += member_bits;
            id = self.resolve(member_type);
        }
        Ok(bits / 8)
    }

    /// Finds a member by name in struct/union `id`, looking inside anonymous
    /// members; returns its bit offset and type.
    fn find_member(&self, id: u32, name: &str, depth: u32) -> Option<(u32, u32)> {
        let t = self.types.get(id as usize)?;
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            let n = self.name(m.name_off);
            if n == name {
                return Some((m.bit_offset, m.type_id));
            }
            if n.is_empty() {
                let inner = self.resolve(m.type_id);
                if let Some((b, ty)) = self.find_member(inner, name, depth + 1) {
                    return Some((m.bit_offset + b, ty));
                }
            }
        }
        None
    }

    /// Offsets for the socket's own view at `tcp:tcp_receive_reset`:
    /// keepalive setting and last send/receive times.
    pub fn tcp_sock_layout(&self) -> Result<probe_common::TcpSockLayout, BtfError> {
        let off = |root: &str, path: &[&str]| self.offset16(root, path);
        let keepopen = self
            .enum_value("SOCK_KEEPOPEN")
            .and_then(|v| u16::try_from(v).ok())
            .ok_or_else(|| {
                BtfError::NoMember(
                    self.source.clone(),
                    "enum sock_flags".into(),
                    "SOCK_KEEPOPEN".into(),
                )
            })?;
        Ok(probe_common::TcpSockLayout {
            present: 1,
            // Linux 6.x moved `sk_flags` into sock_common as `skc_flags`.
            sk_flags: off("sock", &["sk_flags"])
                .or_else(|_| off("sock", &["__sk_common", "skc_flags"]))?,
            keepopen_bit: keepopen,
            keepalive_time: off("tcp_sock", &["keepalive_time"])?,
            lsndtime: off("tcp_sock", &["lsndtime"])?,
            rcv_tstamp: off("tcp_sock", &["rcv_tstamp"])?,
            lrcvtime: off("tcp_sock", &["inet_conn", "icsk_ack", "lrcvtime"])?,
            sk_socket: off("sock", &["sk_socket"])?,
        })
    }

    /// A member's byte offset as the programs' layouts hold it (`u16`).
    fn offset16(&self, root: &str, path: &[&str]) -> Result<u16, BtfError> {
        let v = self.path_offset(root, path)?;
        u16::try_from(v).map_err(|_| {
            BtfError::NoMember(
                self.source.clone(),
                root.into(),
                format!("{} (offset {v} too large)", path.join(".")),
            )
        })
    }

    /// Offsets from a task to the socket behind one of its file
    /// descriptors, for the Go uprobes' attribution (`goh2`).
    pub fn file_layout(&self) -> Result<probe_common::FileLayout, BtfError> {
        let off = |root: &str, path: &[&str]| self.offset16(root, path);
        Ok(probe_common::FileLayout {
            present: 1,
            task_files: off("task_struct", &["files"])?,
            files_fdt: off("files_struct", &["fdt"])?,
            fdt_max_fds: off("fdtable", &["max_fds"])?,
            fdt_fd: off("fdtable", &["fd"])?,
            file_private_data: off("file", &["private_data"])?,
            socket_file: off("socket", &["file"])?,
            socket_sk: off("socket", &["sk"])?,
        })
    }

    /// Offsets for telling which network namespace a socket, packet or task
    /// belongs to (`--netns`).
    pub fn netns_layout(&self) -> Result<probe_common::NetnsLayout, BtfError> {
        let off = |root: &str, path: &[&str]| self.offset16(root, path);
        Ok(probe_common::NetnsLayout {
            present: 1,
            // possible_net_t holds the `struct net *` as its only member.
            skc_net: off("sock", &["__sk_common", "skc_net"])?,
            net_inum: off("net", &["ns", "inum"])?,
            task_nsproxy: off("task_struct", &["nsproxy"])?,
            nsproxy_net_ns: off("nsproxy", &["net_ns"])?,
            skb_dev: off("sk_buff", &["dev"])?,
            dev_nd_net: off("net_device", &["nd_net"])?,
            _pad: 0,
        })
    }

    /// The `struct sock_common` offsets the kprobe programs read.
    pub fn sock_layout(&self) -> Result<SockLayout, BtfError> {
        let m = self.member_offsets("sock_common")?;
        let get = |field: &str| -> Result<u16, BtfError> {
            m.get(field)
                .and_then(|&v| u16::try_from(v).ok())
                .ok_or_else(|| {
                    BtfError::NoMember(self.source.clone(), "sock_common".into(), field.into())
                })
        };
        Ok(SockLayout {
            present: 1,
            family: get("skc_family")?,
            state: get("skc_state")?,
            num: get("skc_num")?,
            dport: get("skc_dport")?,
            rcv_saddr: get("skc_rcv_saddr")?,
            daddr: get("skc_daddr")?,
            v6_rcv_saddr: get("skc_v6_rcv_saddr")?,
            v6_daddr: get("skc_v6_daddr")?,
            _pad: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF bytes: `struct outer { int a; union { struct { int x; int y; }; long z; }; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0outer\0a\0x\0y\0z\0int\0".to_vec();
        let s = |n: &str| -> u32 {
            let pos = strings
                .windows(n.len() + 1)
                .position(|w| &w[..n.len()] == n.as_bytes() && w[n.len()] == 0)
                .expect("string");
            pos as u32
        };
        let mut t = Vec::new();
        let mut push = |v: u32| t.extend_from_slice(&v.to_le_bytes());
        // 1: int
        push(s("int"));
        push(KIND_INT << 24);
        push(4);
        push(32);
        // 2: anonymous struct { x @0, y @32 }
        push(0);
        push(KIND_STRUCT << 24 | 2);
        push(8);
        push(s("x"));
        push(1);
        push(0);
        push(s("y"));
        push(1);
        push(32);
        // 3: anonymous union { struct 2 @0, z @0 }
        push(0);
        push(KIND_UNION << 24 | 2);
        push(8);
        push(0);
        push(2);
        push(0);
        push(s("z"));
        push(1);
        push(0);
        // 4: struct outer { a @0, union 3 @64 }
        push(s("outer"));
        push(KIND_STRUCT << 24 | 2);
        push(16);
        push(s("a"));
        push(1);
        push(0);
        push(0);
        push(3);
        push(64);
        let mut d = Vec::new();
        d.extend_from_slice(&MAGIC.to_le_bytes());
        d.push(1);
        d.push(0);
        for v in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d.extend_from_slice(&t);
        d.extend_from_slice(&strings);
        d
    }

    #[test]
    fn flattens_anonymous_members() {
        let btf = Btf::parse("sample", &sample()).expect("parse");
        let m = btf.member_offsets("outer").expect("outer");
        assert_eq!(m.get("a"), Some(&0));
        assert_eq!(m.get("x"), Some(&8));
        assert_eq!(m.get("y"), Some(&12));
        assert_eq!(m.get("z"), Some(&8));
        assert!(matches!(
            btf.member_offsets("nope"),
            Err(BtfError::NoStruct(..))
        ));
    }

    #[test]
    fn bad_input_is_named() {
        let e = Btf::parse("blob.btf", b"not btf at all, not at all")
            .err()
            .expect("err");
        assert_eq!(
            e.to_string(),
            "blob.btf: not BTF data (bad magic or header)"
        );
        let mut d = sample();
        d.truncate(40);
        let e = Btf::parse("short.btf", &d).err().expect("err");
        assert!(e.to_string().starts_with("short.btf: truncated"), "{e}");
    }

    #[test]
    fn this_kernels_sock_common() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            assert!(
                std::env::var_os("DRAINWATCH_NO_SKIP").is_none(),
                "{VMLINUX_BTF} absent: DRAINWATCH_NO_SKIP is set, nothing may skip"
            );
            eprintln!("skipped: {VMLINUX_BTF} absent (kernel built without BTF)");
            return;
        }
        let l = Btf::from_file(path)
            .expect("vmlinux")
            .sock_layout()
            .expect("sock_common");
        // Stable for many years on x86_64: daddr, rcv_saddr, then dport/num, family, state.
        assert_eq!((l.daddr, l.rcv_saddr, l.dport, l.num), (0, 4, 12, 14));
        assert_eq!((l.family, l.state), (16, 18));
        assert!(l.v6_daddr > l.state && l.v6_rcv_saddr == l.v6_daddr + 16);
        let btf = Btf::from_file(path).expect("vmlinux");
        let t = btf.tcp_sock_layout().expect("tcp_sock");
        assert_eq!(t.keepopen_bit, 3, "SOCK_KEEPOPEN has been 3 for decades");
        let n = btf.netns_layout().expect("netns");
        assert!(n.skc_net > 0 && n.net_inum > 0 && n.task_nsproxy > 0 && n.nsproxy_net_ns > 0);
        assert!(t.lrcvtime > 0 && t.lsndtime > 0 && t.keepalive_time > 0 && t.rcv_tstamp > 0);
        assert!(t.sk_socket > 0);
        assert!(matches!(
            btf.path_offset("tcp_sock", &["inet_conn", "nope"]),
            Err(BtfError::NoMember(_, _, p)) if p == "inet_conn.nope"
        ));
    }
}
