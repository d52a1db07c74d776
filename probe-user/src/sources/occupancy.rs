//! BPF map occupancy: how many entries each hash and LRU map holds against
//! its capacity, exported as `drainwatch_map_entries{map}` and
//! `drainwatch_map_capacity{map}`.
//!
//! The kernel keeps no element count a user can read, so the maps are
//! walked with `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+): the walk goes bucket by
//! bucket, so entries deleted meanwhile (sockets closing) neither restart
//! it nor count twice, as they would with a `get_next_key` walk, and it
//! costs one syscall per 256 entries. Every 15 s: a full 65536-entry table
//! is a few milliseconds of the daemon's time.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    sync::Arc,
    time::Duration,
};

use aya::maps::Map;
use tokio::sync::watch;

use crate::export::metrics::Metrics;

/// How often the maps are walked.
const INTERVAL: Duration = Duration::from_secs(15);

/// Entries fetched per syscall (grown when one hash bucket holds more).
const CHUNK: u32 = 256;

/// `BPF_MAP_LOOKUP_BATCH` in `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// One map to count: our own duplicate of its fd, so the count does not
/// depend on who owns the map object (the wire task takes `FLOWS`).
pub struct Tracked {
    /// The map's name, lower case: the metric label.
    label: String,
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
    capacity: u32,
}

/// The hash and LRU maps of `ebpf`. Call before any map is taken out of it.
pub fn tracked(ebpf: &aya::Ebpf) -> Vec<Tracked> {
    let mut out = Vec::new();
    for (name, map) in ebpf.maps() {
        let data = match map {
            Map::HashMap(d) | Map::LruHashMap(d) => d,
            _ => continue,
        };
        let info = match data.info() {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!("map {name}: no map info ({e}); its occupancy is not exported");
                continue;
            }
        };
        let fd = match data.fd().as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("map {name}: cannot duplicate its fd ({e}); occupancy not exported");
                continue;
            }
        };
        out.push(Tracked {
            label: name.to_ascii_lowercase(),
            fd,
            key_size: info.key_size() as usize,
            value_size: info.value_size() as usize,
            capacity: info.max_entries(),
        });
    }
    out.sort_by(|a, b| a.label.cmp(&b.label));
    out
}

impl Tracked {
    /// The map's name, lower case.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The map's `max_entries`.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}

/// Exports every tracked map's capacity once and its entries every
/// [`INTERVAL`], until `stop`.
pub async fn task(
    maps: Vec<Tracked>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    for m in &maps {
        metrics
            .map_capacity
            .with_label_values(&[&m.label])
            .set(i64::from(m.capacity));
    }
    // A map whose walk failed once is not walked again (one log line).
    let mut failed = vec![false; maps.len()];
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        for (m, failed) in maps.iter().zip(failed.iter_mut()) {
            if *failed {
                continue;
            }
            match count(m) {
                Ok(n) => metrics
                    .map_entries
                    .with_label_values(&[&m.label])
                    .set(n as i64),
                Err(e) => {
                    *failed = true;
                    tracing::warn!(
                        "map {}: counting entries failed ({e}; BPF_MAP_LOOKUP_BATCH needs Linux 5.6); drainwatch_map_entries{{map=\"{}\"}} is not exported",
                        m.label,
                        m.label
                    );
                }
            }
        }
    }
}

/// `union bpf_attr` for the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Entries in `m` now (a snapshot taken bucket by bucket).
fn count(m: &Tracked) -> std::io::Result<u64> {
    walk(m, |_, _| {})
}

/// Calls `f` with each entry's key and value bytes (a snapshot taken
/// bucket by bucket, as [`count`]) and returns how many there were.
pub fn walk(m: &Tracked, mut f: impl FnMut(&[u8], &[u8])) -> std::io::Result<u64> {
    let mut chunk = CHUNK;
    let mut keys = vec![0u8; m.key_size * chunk as usize];
    let mut values = vec![0u8; m.value_size * chunk as usize];
    // The batch token of hash maps is a bucket index (u32).
    let mut in_token = 0u32;
    let mut out_token = 0u32;
    let mut first = true;
    let mut total = 0u64;
    // Every successful call returns at least one entry; ENOSPC grows the
    // chunk at most up to the capacity. So this bounds the walk.
    for _ in 0..=u64::from(m.capacity) + 32 {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const in_token as u64 },
            out_batch: &raw mut out_token as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: m.fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: attr is a valid BPF_MAP_LOOKUP_BATCH attribute whose
        // pointers are live buffers sized for `count` keys and values; the
        // kernel writes only within them and into attr.count.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (r != 0).then(std::io::Error::last_os_error);
        let code = err.as_ref().and_then(std::io::Error::raw_os_error);
        if r == 0 || code == Some(libc::ENOENT) {
            let n = (attr.count as usize).min(chunk as usize);
            for i in 0..n {
                f(
                    &keys[i * m.key_size..(i + 1) * m.key_size],
                    &values[i * m.value_size..(i + 1) * m.value_size],
                );
            }
            total += n as u64;
        }
        let Some(err) = err else {
            in_token = out_token;
            first = false;
            continue;
        };
        match code {
            // The end of the map: the last entries came with it.
            Some(libc::ENOENT) => return Ok(total),
            // One bucket holds more entries than fit: retry it bigger.
            Some(libc::ENOSPC) if chunk < m.capacity => {
                chunk = (chunk * 2).min(m.capacity.max(1));
                keys.resize(m.key_size * chunk as usize, 0);
                values.resize(m.value_size * chunk as usize, 0);
            }
            _ => return Err(err),
        }
    }
    Err(std::io::Error::other("the walk did not end"))
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd as _;

    use super::*;

    fn bpf(cmd: libc::c_long, attr: *mut u8, size: usize) -> libc::c_long {
        // SAFETY: each caller passes a valid attribute of `size` bytes.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) }
    }

    /// A plain hash map (u32 -> u32) of `capacity` with `n` entries.
    fn hash_map(capacity: u32, n: u32) -> Option<Tracked> {
        // BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, flags.
        let mut create = [1u32, 4, 4, capacity, 0];
        let fd = bpf(
            0,
            create.as_mut_ptr().cast(),
            std::mem::size_of_val(&create),
        );
        if fd < 0 {
            eprintln!(
                "skipped: cannot create a BPF map ({}); run as root",
                std::io::Error::last_os_error()
            );
            return None;
        }
        // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        for k in 0..n {
            let v = k * 7;
            // BPF_MAP_UPDATE_ELEM: map_fd, pad, key, value, flags.
            let mut attr = [0u64; 4];
            attr[0] = u64::from(fd.as_raw_fd() as u32);
            attr[1] = &raw const k as u64;
            attr[2] = &raw const v as u64;
            let r = bpf(2, attr.as_mut_ptr().cast(), std::mem::size_of_val(&attr));
            assert_eq!(r, 0, "update: {}", std::io::Error::last_os_error());
        }
        Some(Tracked {
            label: "test".into(),
            fd,
            key_size: 4,
            value_size: 4,
            capacity,
        })
    }

    #[test]
    fn counts_entries_across_chunks() {
        for (capacity, n) in [(1024, 0), (1024, 1), (1024, 300), (4096, 4096)] {
            let Some(m) = hash_map(capacity, n) else {
                return;
            };
            assert_eq!(count(&m).expect("count"), u64::from(n), "{n} of {capacity}");
        }
    }
}
