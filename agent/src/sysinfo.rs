//! Facts about the guest the agent reports in its hello.

use nix::time::{clock_gettime, ClockId};

/// Guest time since boot in µs (CLOCK_BOOTTIME starts at kernel boot).
pub fn boottime_us() -> u64 {
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Number of online CPUs, from the kernel's own list (e.g. "0-1,3").
pub fn online_cpus() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map(|s| count_cpu_list(s.trim()))
        .unwrap_or(0)
}

fn count_cpu_list(list: &str) -> u32 {
    list.split(',')
        .filter(|r| !r.is_empty())
        .map(|r| match r.split_once('-') {
            Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => u32::from(r.parse::<u32>().is_ok()),
        })
        .sum()
}

pub fn memory_total_kib() -> u64 {
    nix::sys::sysinfo::sysinfo()
        .map(|i| i.ram_total() / 1024)
        .unwrap_or(0)
}

/// Copies the kernel log records to stdout (the console, if any).
pub fn dump_kmsg() {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut kmsg) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return;
    };
    let mut out = std::io::stdout().lock();
    // One record per read; EAGAIN ends the log.
    let mut buf = vec![0u8; 8192];
    loop {
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let _ = out.write_all(&buf[..n]);
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    let _ = out.flush();
}

/// Value of `key=value` on the kernel command line.
pub fn cmdline_param(key: &str) -> Option<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    find_param(&cmdline, key).map(str::to_owned)
}

fn find_param<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0"), 1);
        assert_eq!(count_cpu_list("0-1"), 2);
        assert_eq!(count_cpu_list("0-3,6,8-9"), 7);
        assert_eq!(count_cpu_list("3-1"), 0);
        assert_eq!(count_cpu_list("x"), 0);
    }

    #[test]
    fn params() {
        let c = "quiet husk.notify_port=1025 panic=1\n";
        assert_eq!(find_param(c, "husk.notify_port"), Some("1025"));
        assert_eq!(find_param(c, "panic"), Some("1"));
        assert_eq!(find_param(c, "husk"), None);
    }
}
