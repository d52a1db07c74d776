//! Finding the processes to watch that were already running when the
//! daemon started: by name (`/proc/<pid>/comm`) and as owners of a listening
//! socket on a watched port (`/proc/net/tcp{,6}` inode -> `/proc/<pid>/fd`).

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// Why a process is watched; the values the kernel side uses.
pub const BY_NAME: u8 = 1;
pub const BY_LISTENER: u8 = 2;

/// Socket inodes of listeners on `ports` in this network namespace. The
/// tables list every socket (an apiserver's 100 000 watches are 15 MB of
/// text): read line by line, never whole.
pub fn listener_inodes(ports: &[u16]) -> HashSet<u64> {
    tcp_table_lines("/proc/net")
        .filter_map(|l| listener_inode(&l, ports))
        .collect()
}

/// The socket lines of `dir`'s `tcp` and `tcp6` tables (`/proc/net`, or
/// `/proc/PID/net` for that process's namespace), read line by line.
fn tcp_table_lines(dir: &str) -> impl Iterator<Item = String> {
    ["tcp", "tcp6"].into_iter().flat_map(move |file| {
        fs::File::open(format!("{dir}/{file}"))
            .into_iter()
            .flat_map(|f| BufReader::new(f).lines().skip(1).map_while(Result::ok))
    })
}

/// Parses one /proc/net/tcp table: inodes of LISTEN sockets on `ports`.
pub fn parse_listener_inodes(text: &str, ports: &[u16]) -> Vec<u64> {
    text.lines()
        .skip(1)
        .filter_map(|l| listener_inode(l, ports))
        .collect()
}

/// The inode of one /proc/net/tcp line's socket if it listens on `ports`.
fn listener_inode(line: &str, ports: &[u16]) -> Option<u64> {
    let mut cols = line.split_whitespace();
    let port = cols
        .nth(1)?
        .rsplit(':')
        .next()
        .and_then(|p| u16::from_str_radix(p, 16).ok())?;
    // Columns 3 (state) and 9 (inode).
    let state = cols.nth(1)?;
    if state != "0A" || !ports.contains(&port) {
        return None;
    }
    cols.nth(5)?.parse().ok()
}

/// The inode number of a network namespace file (`/proc/self/ns/net`,
/// `/run/netns/NAME`, `/proc/PID/ns/net`).
pub fn netns_inode(path: &std::path::Path) -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let ino = fs::metadata(path)?.ino();
    u32::try_from(ino)
        .map_err(|_| std::io::Error::other(format!("inode {ino} does not fit 32 bits")))
}

/// (tgid, why) for every running process to watch (in namespace `netns`
/// when given).
pub fn watched_processes(names: &[String], ports: &[u16], netns: Option<u32>) -> Vec<(u32, u8)> {
    watched_processes_except(names, ports, netns, &HashSet::new())
}

/// [`watched_processes`], leaving out the processes in `known` (already
/// considered by the caller): finding a listener's owner reads every file
/// descriptor's link, and an apiserver holding 100 000 watches would cost
/// 100 000 readlinks at each rescan instead of once. The listener table is
/// read only if some unknown process needs it.
pub fn watched_processes_except(
    names: &[String],
    ports: &[u16],
    netns: Option<u32>,
    known: &HashSet<u32>,
) -> Vec<(u32, u8)> {
    let mut inodes: Option<HashSet<u64>> = None;
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if known.contains(&pid) {
            continue;
        }
        if let Some(want) = netns
            && netns_inode(std::path::Path::new(&format!("/proc/{pid}/ns/net"))).ok() != Some(want)
        {
            continue;
        }
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if names
            .iter()
            .any(|n| n.len().min(15) > 0 && comm.trim_end() == &n[..n.len().min(15)])
        {
            out.push((pid, BY_NAME));
            continue;
        }
        if ports.is_empty() {
            continue;
        }
        let inodes = inodes.get_or_insert_with(|| listener_inodes(ports));
        if inodes.is_empty() {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let owns = fds.filter_map(Result::ok).any(|fd| {
            fs::read_link(fd.path())
                .ok()
                .and_then(|t| {
                    t.to_str()?
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse::<u64>()
                        .ok()
                })
                .is_some_and(|ino| inodes.contains(&ino))
        });
        if owns {
            out.push((pid, BY_LISTENER));
        }
    }
    out
}

/// A connection this host opened to a watched port before the daemon
/// started: its ends, the process holding it and that process's cgroup v2
/// path (from `/proc/PID/cgroup`), for naming its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenConn {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub pid: u32,
    pub comm: String,
    pub cgroup_v2: Option<String>,
}

/// The established connections to a remote port in `ports`, with the
/// processes that hold them (in namespace `netns` when given), at most
/// `max`. Each network namespace's tables are read once, line by line;
/// each process's descriptors are read only when its namespace has such
/// connections, and only until every one of them is found. A socket held
/// by several processes (inherited across fork) is named by the first found.
pub fn open_connections(ports: &[u16], netns: Option<u32>, max: usize) -> Vec<OpenConn> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut tables: HashMap<u32, HashMap<u64, (SocketAddr, SocketAddr)>> = HashMap::new();
    let mut out = Vec::new();
    for entry in dir.filter_map(Result::ok) {
        if out.len() >= max {
            break;
        }
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(ns) = netns_inode(std::path::Path::new(&format!("/proc/{pid}/ns/net"))) else {
            continue;
        };
        if netns.is_some_and(|want| want != ns) {
            continue;
        }
        let conns = tables.entry(ns).or_insert_with(|| {
            tcp_table_lines(&format!("/proc/{pid}/net"))
                .filter_map(|l| established_to(&l, ports))
                .collect()
        });
        if conns.is_empty() {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        // The process's name and cgroup, read once, at its first match.
        let mut who: Option<(String, Option<String>)> = None;
        for fd in fds.filter_map(Result::ok) {
            // Every connection of this namespace found: its other
            // processes' descriptors (an apiserver's 100 000) are not read.
            if conns.is_empty() || out.len() >= max {
                break;
            }
            let Some(ino) = fs::read_link(fd.path()).ok().and_then(|t| {
                t.to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            }) else {
                continue;
            };
            // Taken once: a socket several processes hold (inherited
            // across fork) is named by the first found.
            let Some((local, remote)) = conns.remove(&ino) else {
                continue;
            };
            let (comm, cgroup_v2) = who.get_or_insert_with(|| {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                let cgroup_v2 = fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .ok()
                    .and_then(|t| {
                        t.lines()
                            .find_map(|l| l.strip_prefix("0::").map(str::to_string))
                    });
                (comm.trim_end().to_string(), cgroup_v2)
            });
            out.push(OpenConn {
                local,
                remote,
                pid,
                comm: comm.clone(),
                cgroup_v2: cgroup_v2.clone(),
            });
        }
    }
    out
}

/// One /proc/net/tcp{,6} line: (inode, (local, remote)) when the socket is
/// ESTABLISHED to a remote port in `ports`. IPv4-mapped addresses are
/// given as IPv4, as the events give them.
pub fn established_to(line: &str, ports: &[u16]) -> Option<(u64, (SocketAddr, SocketAddr))> {
    let mut cols = line.split_whitespace();
    let local = hex_addr(cols.nth(1)?)?;
    let remote = hex_addr(cols.next()?)?;
    if cols.next()? != "01" || !ports.contains(&remote.port()) {
        return None;
    }
    // Columns 4 to 8, then the inode.
    let ino = cols.nth(5)?.parse().ok()?;
    Some((ino, (local, remote)))
}

/// `0100007F:192B` (IPv4) or 32 hex digits and a port (IPv6): the kernel
/// prints each 32-bit word of the address in host order (little-endian here).
fn hex_addr(s: &str) -> Option<SocketAddr> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let word = |i: usize| {
        a.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_le_bytes)
    };
    let ip = match a.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn established_connections_from_the_tables() {
        let v4 = "   1: 0100007F:C350 0100007F:192B 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            established_to(v4, &[6443]),
            Some((
                777,
                (
                    "127.0.0.1:50000".parse().expect("a"),
                    "127.0.0.1:6443".parse().expect("a")
                )
            ))
        );
        assert_eq!(established_to(v4, &[443]), None, "another port");
        let listen = v4.replacen(" 01 ", " 0A ", 1);
        assert_eq!(established_to(&listen, &[6443]), None, "not established");
        // ::ffff:198.18.0.1 -> ::ffff:198.18.0.2:443, and 2001:db8::1 -> 2001:db8::2:443.
        let mapped = "   0: 0000000000000000FFFF0000010012C6:A000 0000000000000000FFFF0000020012C6:01BB 01 00000000:00000000 00:00000000 00000000     0        0 91 1 0";
        assert_eq!(
            established_to(mapped, &[443]).map(|(_, f)| f),
            Some((
                "198.18.0.1:40960".parse().expect("a"),
                "198.18.0.2:443".parse().expect("a")
            ))
        );
        let v6 = "   0: B80D0120000000000000000001000000:A000 B80D0120000000000000000002000000:01BB 01 00000000:00000000 00:00000000 00000000     0        0 92 1 0";
        assert_eq!(
            established_to(v6, &[443]).map(|(_, f)| f),
            Some((
                "[2001:db8::1]:40960".parse().expect("a"),
                "[2001:db8::2]:443".parse().expect("a")
            ))
        );
    }

    #[test]
    fn finds_a_connection_this_process_holds() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (_s, _) = l.accept().expect("accept");
        let found = open_connections(&[port], None, 100);
        let me = std::process::id();
        let mine: Vec<&OpenConn> = found.iter().filter(|o| o.pid == me).collect();
        assert_eq!(mine.len(), 1, "the client end only: {found:?}");
        assert_eq!(mine[0].local, c.local_addr().expect("local"));
        assert_eq!(mine[0].remote.port(), port);
        assert!(mine[0].cgroup_v2.is_some(), "{:?}", mine[0]);
    }

    #[test]
    fn listener_inodes_from_a_table() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:192B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:192B 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0\n   2: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(parse_listener_inodes(text, &[6443]), vec![4242]);
        assert_eq!(parse_listener_inodes(text, &[8080, 6443]), vec![4242, 999]);
    }

    #[test]
    fn finds_a_listener_owned_by_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let me = std::process::id();
        let found = watched_processes(&[], &[port], None);
        assert!(found.contains(&(me, BY_LISTENER)), "{found:?}");
        // A process the caller already knows is not walked again.
        let known = HashSet::from([me]);
        let found = watched_processes_except(&[], &[port], None, &known);
        assert!(!found.iter().any(|(p, _)| *p == me), "{found:?}");
        let comm = fs::read_to_string("/proc/self/comm").expect("comm");
        let found = watched_processes(&[comm.trim().to_string()], &[], None);
        assert!(found.contains(&(me, BY_NAME)), "{found:?}");
        let own = netns_inode(std::path::Path::new("/proc/self/ns/net")).expect("netns");
        let found = watched_processes(&[comm.trim().to_string()], &[], Some(own));
        assert!(found.contains(&(me, BY_NAME)), "same namespace: {found:?}");
        let found = watched_processes(&[comm.trim().to_string()], &[], Some(own.wrapping_add(1)));
        assert!(
            !found.contains(&(me, BY_NAME)),
            "another namespace: {found:?}"
        );
    }
}
