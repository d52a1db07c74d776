//! Finding the processes to watch that were already running when the
//! daemon started: by name (`/proc/<pid>/comm`) and as owners of a listening
//! socket on a watched port (`/proc/net/tcp{,6}` inode -> `/proc/<pid>/fd`).

use std::{collections::HashSet, fs};

/// Why a process is watched; the values the kernel side uses.
pub const BY_NAME: u8 = 1;
pub const BY_LISTENER: u8 = 2;

/// Socket inodes of listeners on `ports` in this network namespace.
pub fn listener_inodes(ports: &[u16]) -> HashSet<u64> {
    let mut out = HashSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        out.extend(parse_listener_inodes(&text, ports));
    }
    out
}

/// Parses one /proc/net/tcp table: inodes of LISTEN sockets on `ports`.
pub fn parse_listener_inodes(text: &str, ports: &[u16]) -> Vec<u64> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let port = cols
                .get(1)?
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())?;
            (cols.get(3) == Some(&"0A") && ports.contains(&port))
                .then(|| cols.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
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
    let inodes = listener_inodes(ports);
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
