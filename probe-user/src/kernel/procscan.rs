//! Finding the processes to watch that were already running when the
//! daemon started: by name (`/proc/<pid>/comm`) and as owners of a listening
//! socket on a watched port (`/proc/net/tcp{,6}` inode -> `/proc/<pid>/fd`).

use std::{
    collections::HashSet,
    fs,
    io::{BufRead as _, BufReader},
};

/// Why a process is watched; the values the kernel side uses.
pub const BY_NAME: u8 = 1;
pub const BY_LISTENER: u8 = 2;

/// Socket inodes of listeners on `ports` in this network namespace. The
/// tables list every socket (an apiserver's 100 000 watches are 15 MB of
/// text): read line by line, never whole.
pub fn listener_inodes(ports: &[u16]) -> HashSet<u64> {
    let mut out = HashSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(f) = fs::File::open(file) else {
            continue;
        };
        out.extend(
            BufReader::new(f)
                .lines()
                .skip(1)
                .map_while(Result::ok)
                .filter_map(|l| listener_inode(&l, ports)),
        );
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

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
