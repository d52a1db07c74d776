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

fn read_u32(path: &str) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Looks an interface up by name; the error names it.
pub fn lookup(name: &str) -> Result<Iface, String> {
    if name.is_empty() || name.contains('/') || name.contains("..") {
        return Err(format!("--iface {name:?}: not an interface name"));
    }
    let index = read_u32(&format!("/sys/class/net/{name}/ifindex"))
        .ok_or_else(|| format!("--iface {name}: no such interface in this network namespace"))?;
    let kind = read_u32(&format!("/sys/class/net/{name}/type"))
        .ok_or_else(|| format!("--iface {name}: cannot read its link type"))?;
    let l2_len = l2_len(kind).ok_or_else(|| {
        format!("--iface {name}: link type {kind} is not supported (Ethernet, loopback and L3 tunnels are)")
    })?;
    Ok(Iface {
        name: name.to_string(),
        index,
        l2_len,
    })
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
