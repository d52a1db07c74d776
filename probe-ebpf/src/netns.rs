//! The network-namespace filter (`--netns`): on a host with many namespaces
//! (containers, or the lab's hosts), only the chosen one's sockets, packets
//! and processes are reported. Offsets come from BTF at load.

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
};
use probe_common::{FIELD_ABSENT, NetnsLayout};

#[unsafe(no_mangle)]
pub static NETNS_LAYOUT: Global<NetnsLayout> = Global::new(NetnsLayout::ABSENT);

/// Inode number of the namespace to report; 0 reports every namespace.
#[unsafe(no_mangle)]
pub static NETNS_FILTER: Global<u32> = Global::new(0);

#[inline(always)]
fn read_ptr(base: u64, off: u16) -> Option<u64> {
    if base == 0 || off == FIELD_ABSENT {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const u64).ok() }
}

#[inline(always)]
fn net_inum(net: u64, l: &NetnsLayout) -> Option<u32> {
    if net == 0 || l.net_inum == FIELD_ABSENT {
        return None;
    }
    unsafe { bpf_probe_read_kernel((net + u64::from(l.net_inum)) as *const u32).ok() }
}

#[inline(always)]
pub fn filtering() -> bool {
    NETNS_FILTER.load() != 0
}

/// Whether socket `sk` lives in the chosen namespace (always, without a filter).
#[inline(always)]
pub fn sk_ok(sk: u64) -> bool {
    let want = NETNS_FILTER.load();
    if want == 0 {
        return true;
    }
    let l = NETNS_LAYOUT.load();
    read_ptr(sk, l.skc_net).and_then(|net| net_inum(net, &l)) == Some(want)
}

/// Whether the packet `skb` arrived on, or leaves by, a device of the chosen namespace.
#[inline(always)]
pub fn skb_ok(skb: u64) -> bool {
    let want = NETNS_FILTER.load();
    if want == 0 {
        return true;
    }
    let l = NETNS_LAYOUT.load();
    read_ptr(skb, l.skb_dev)
        .and_then(|dev| read_ptr(dev, l.dev_nd_net))
        .and_then(|net| net_inum(net, &l))
        == Some(want)
}

/// Whether the current task runs in the chosen namespace.
#[inline(always)]
pub fn current_ok() -> bool {
    let want = NETNS_FILTER.load();
    if want == 0 {
        return true;
    }
    let l = NETNS_LAYOUT.load();
    let task = unsafe { bpf_get_current_task() };
    read_ptr(task, l.task_nsproxy)
        .and_then(|ns| read_ptr(ns, l.nsproxy_net_ns))
        .and_then(|net| net_inum(net, &l))
        == Some(want)
}
