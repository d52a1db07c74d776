//! Kernel clocks: the tick rate (HZ), needed to turn the jiffies that
//! `struct tcp_sock` keeps into seconds.

use std::time::{Duration, Instant};

const KNOWN_HZ: [u32; 4] = [100, 250, 300, 1000];

fn timer_list_jiffies() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/timer_list").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("jiffies:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Rounds a measured tick rate to the nearest rate Linux is built with.
pub fn nearest_hz(measured: f64) -> u32 {
    KNOWN_HZ
        .iter()
        .copied()
        .min_by(|a, b| {
            (f64::from(*a) - measured)
                .abs()
                .total_cmp(&(f64::from(*b) - measured).abs())
        })
        .unwrap_or(250)
}

/// `CONFIG_HZ` from a kernel config text.
pub fn hz_from_config(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
}

/// The kernel's HZ: measured from /proc/timer_list over `sample`, else read
/// from /boot/config-<release>. `None` if neither works.
pub fn kernel_hz(sample: Duration) -> Option<u32> {
    if let Some(j0) = timer_list_jiffies() {
        let t0 = Instant::now();
        std::thread::sleep(sample);
        if let Some(j1) = timer_list_jiffies() {
            let secs = t0.elapsed().as_secs_f64();
            if j1 > j0 && secs > 0.0 {
                return Some(nearest_hz((j1 - j0) as f64 / secs));
            }
        }
    }
    // Containers often mask /proc/timer_list: fall back to the kernel
    // config where distributions keep it (RHCOS: under /usr/lib/modules).
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let release = release.trim();
    [
        format!("/boot/config-{release}"),
        format!("/usr/lib/modules/{release}/config"),
        format!("/lib/modules/{release}/config"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|text| hz_from_config(&text))
}

/// `net.ipv4.tcp_keepalive_time` in this network namespace, seconds.
pub fn default_keepalive_secs() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_keepalive_time")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_and_config() {
        assert_eq!(nearest_hz(248.7), 250);
        assert_eq!(nearest_hz(990.0), 1000);
        assert_eq!(nearest_hz(101.0), 100);
        assert_eq!(
            hz_from_config("# x\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"),
            Some(250)
        );
        assert_eq!(hz_from_config("nothing"), None);
    }
}
