//! Choosing the interfaces the TC classifier attaches to, and how long
//! their link-layer header is (the classifier needs to find the IP header).

use std::collections::BTreeSet;

/// `/sys/class/net/<if>/type` values.
const ARPHRD_ETHER: u32 = 1;
const ARPHRD_LOOPBACK: u32 = 772;
const ARPHRD_NONE: u32 = 65534;

/// An interface to attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub index: u32,
    /// Bytes before the IP header in what TC sees.
    pub l2_len: u32,
}

/// Link-layer header length for an ARPHRD type, `None` if unsupported.
pub fn l2_len(arphrd: u32) -> Option<u32> {
    match arphrd {
        ARPHRD_ETHER | ARPHRD_LOOPBACK => Some(14),
        ARPHRD_NONE => Some(0),
        _ => None,
    }
}

/// Index and ARPHRD link type of `name` in the calling thread's network
/// namespace. Asked with ioctls on a socket, not read from /sys/class/net:
/// sysfs shows the namespace it was mounted in, not the one a thread that
/// entered another namespace (see [`in_netns`]) is in.
fn index_and_type(name: &str) -> Result<(u32, u32), String> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| format!("--iface {name:?}: not an interface name"))?;
    if name.len() >= libc::IFNAMSIZ {
        return Err(format!(
            "--iface {name:?}: longer than an interface name can be"
        ));
    }
    // SAFETY: a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(format!(
            "--iface {name}: no such interface in this network namespace"
        ));
    }
    // SAFETY: plain syscall; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "--iface {name}: cannot open a socket to ask its link type: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr of the ifreq we own.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: the fd opened above.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(format!("--iface {name}: cannot read its link type: {err}"));
    }
    // SAFETY: SIOCGIFHWADDR sets the hwaddr member of the union.
    let kind = u32::from(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family });
    Ok((index, kind))
}

/// Looks an interface up by name in the calling thread's network
/// namespace; the error names it.
pub fn lookup(name: &str) -> Result<Iface, String> {
    if name.is_empty() || name.contains('/') || name.contains("..") {
        return Err(format!("--iface {name:?}: not an interface name"));
    }
    let (index, kind) = index_and_type(name)?;
    let l2_len = l2_len(kind).ok_or_else(|| {
        format!("--iface {name}: link type {kind} is not supported (Ethernet, loopback and L3 tunnels are)")
    })?;
    Ok(Iface {
        name: name.to_string(),
        index,
        l2_len,
    })
}

/// Runs `f` on a thread that has entered the network namespace at `path`
/// (such as /run/netns/NAME or /proc/PID/ns/net), so that interface
/// lookups, netlink and TCX attachment by ifindex happen there while the
/// daemon's own threads stay where they are.
pub fn in_netns<T: Send>(
    path: &std::path::Path,
    f: impl FnOnce() -> T + Send,
) -> std::io::Result<T> {
    use std::os::fd::AsRawFd as _;
    let ns = std::fs::File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only, with a namespace fd we hold open.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("network-namespace thread panicked")))
    })
}

/// Whether `path` is the network namespace this process runs in.
pub fn is_own_netns(path: &std::path::Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let (theirs, ours) = (
        std::fs::metadata(path)?,
        std::fs::metadata("/proc/self/ns/net")?,
    );
    Ok(theirs.ino() == ours.ino() && theirs.dev() == ours.dev())
}

/// The default: loopback plus every interface that is up and has an
/// address (the ones that can carry the watched ports' traffic).
pub fn default_ifaces() -> Vec<Iface> {
    let mut names = BTreeSet::new();
    names.insert("lo".to_string());
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free with freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut addrs) } == 0 {
        let mut cur = addrs;
        while !cur.is_null() {
            // SAFETY: cur walks the list getifaddrs returned.
            let ifa = unsafe { &*cur };
            let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
            let has_ip = !ifa.ifa_addr.is_null() && {
                // SAFETY: ifa_addr is non-null.
                let fam = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
                fam == libc::AF_INET || fam == libc::AF_INET6
            };
            if up && has_ip && !ifa.ifa_name.is_null() {
                // SAFETY: ifa_name is a NUL-terminated string.
                let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
                names.insert(name.to_string_lossy().into_owned());
            }
            cur = ifa.ifa_next;
        }
        // SAFETY: the list from getifaddrs.
        unsafe { libc::freeifaddrs(addrs) };
    }
    names
        .into_iter()
        .filter_map(|n| match lookup(&n) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::info!("wire observer skips {n}: {e}");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_and_bad_names_are_named() {
        let lo = lookup("lo").expect("lo");
        assert_eq!((lo.index, lo.l2_len), (1, 14));
        let e = lookup("nope0").expect_err("missing");
        assert!(e.contains("--iface nope0"), "{e}");
        assert!(lookup("../x").is_err());
        assert!(default_ifaces().iter().any(|i| i.name == "lo"));
        assert_eq!(l2_len(65534), Some(0));
        assert_eq!(l2_len(24), None);
    }
}
