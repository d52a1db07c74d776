//! Endpoint mode: the apiserver is watched as (address, port) pairs instead
//! of every connection on a port (a worker talks to many port-443 servers;
//! only the apiserver's are evidence). The daemon writes the pairs into
//! `ENDPOINTS` and sets [`RUNTIME_ENDPOINTS`](crate::RUNTIME_ENDPOINTS); the
//! programs keep an event on a watched port only when one of its two ends is
//! a pair in the map. The port bitmap still drops everything else first, so
//! unwatched ports cost no map lookup.

use crate::{AF_INET, AF_INET6};

/// Most endpoints the map holds: the addresses of one apiserver name
/// (an LB's few, a Service's ClusterIP and its EndpointSlice's masters).
pub const ENDPOINT_TABLE: u32 = 256;

/// One watched endpoint. IPv4 is stored as `AF_INET` with the address in
/// the first 4 bytes, and again as its IPv4-mapped IPv6 form (a dual-stack
/// socket's view of an IPv4 peer), so that the programs look up either as
/// they find it ([`EndpointKey::forms`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub addr: [u8; 16],
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    pub _pad: u32,
}

impl EndpointKey {
    /// The key for `addr` (16 bytes as the kernel gives them: IPv4 in the
    /// first 4) of `family`, port `port`, IPv4-mapped IPv6 folded to IPv4.
    #[inline(always)]
    pub fn new(family: u16, addr: &[u8; 16], port: u16) -> EndpointKey {
        let mut k = EndpointKey {
            addr: [0; 16],
            family,
            port,
            _pad: 0,
        };
        let mapped =
            family == AF_INET6 && addr[..10] == [0u8; 10] && addr[10] == 0xff && addr[11] == 0xff;
        if family == AF_INET || mapped {
            k.family = AF_INET;
            let at = if mapped { 12 } else { 0 };
            k.addr[0] = addr[at];
            k.addr[1] = addr[at + 1];
            k.addr[2] = addr[at + 2];
            k.addr[3] = addr[at + 3];
        } else {
            k.addr = *addr;
        }
        k
    }
}

impl EndpointKey {
    /// The keys to write for an endpoint: itself, and for IPv4 also its
    /// IPv4-mapped IPv6 form.
    pub fn forms(self) -> [Option<EndpointKey>; 2] {
        if self.family != AF_INET {
            return [Some(self), None];
        }
        let mut mapped = self;
        mapped.family = AF_INET6;
        mapped.addr = [0; 16];
        mapped.addr[10] = 0xff;
        mapped.addr[11] = 0xff;
        mapped.addr[12..].copy_from_slice(&self.addr[..4]);
        [Some(self), Some(mapped)]
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for EndpointKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv6_is_the_ipv4_key() {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[198, 18, 0, 100]);
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[198, 18, 0, 100]);
        assert_eq!(
            EndpointKey::new(AF_INET, &v4, 443),
            EndpointKey::new(AF_INET6, &mapped, 443)
        );
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        v6[15] = 1;
        let k = EndpointKey::new(AF_INET6, &v6, 443);
        assert_eq!((k.family, k.addr, k.port), (AF_INET6, v6, 443));
        let [a, b] = EndpointKey::new(AF_INET, &v4, 443).forms();
        assert_eq!(a, Some(EndpointKey::new(AF_INET, &v4, 443)));
        let b = b.expect("mapped form");
        assert_eq!((b.family, b.addr), (AF_INET6, mapped));
        assert_eq!(k.forms(), [Some(k), None]);
    }
}
