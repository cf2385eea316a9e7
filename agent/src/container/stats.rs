//! `ContainerStats`: resource usage from the container's cgroup v2 files and
//! the guest's /proc/meminfo.
//!
//! A file that does not exist (its controller is not enabled for the
//! cgroup) reads as 0 / no limit. A file that exists must parse: the kernel
//! writes them, and a value that does not parse is reported, not guessed.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::Path;

use husk_protocol::ContainerStats;

/// Parses a flat-keyed cgroup file (`cpu.stat`, `memory.stat`,
/// `memory.events`): one `name value` pair per line.
pub fn parse_flat_keyed(text: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(key), Some(value), None) = (f.next(), f.next(), f.next()) else {
            return Err(format!("line {}: {line:?} is not \"name value\"", i + 1));
        };
        let value = value
            .parse::<u64>()
            .map_err(|_| format!("line {}: {key}: {value:?} is not a number", i + 1))?;
        if out.insert(key.to_string(), value).is_some() {
            return Err(format!("line {}: {key} appears twice", i + 1));
        }
    }
    Ok(out)
}

/// Parses a single-value file (`memory.current`).
pub fn parse_value(text: &str) -> Result<u64, String> {
    let t = text.trim();
    t.parse::<u64>()
        .map_err(|_| format!("{t:?} is not a number"))
}

/// Parses a limit file (`memory.max`, `pids.max`): a number or `max`.
pub fn parse_limit(text: &str) -> Result<Option<u64>, String> {
    match text.trim() {
        "max" => Ok(None),
        _ => parse_value(text).map(Some),
    }
}

/// MemTotal and MemAvailable of /proc/meminfo, in bytes (0 when absent).
pub fn parse_meminfo(text: &str) -> Result<(u64, u64), String> {
    let mut total = 0;
    let mut available = 0;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            _ => continue,
        };
        let mut f = rest.split_whitespace();
        let (Some(n), Some("kB"), None) = (f.next(), f.next(), f.next()) else {
            return Err(format!("{key}: {rest:?} is not \"N kB\""));
        };
        let kib = n
            .parse::<u64>()
            .map_err(|_| format!("{key}: {n:?} is not a number"))?;
        *slot = kib
            .checked_mul(1024)
            .ok_or_else(|| format!("{key}: {n} kB overflows"))?;
    }
    Ok((total, available))
}

/// The file's text, or None when it does not exist.
fn read_opt(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("read {}: {e}", path.display())),
    }
}

/// Reads `name` in `dir` and parses it; None when the file does not exist.
fn read_parsed<T>(
    dir: &Path,
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    match read_opt(&dir.join(name))? {
        Some(t) => parse(&t).map(Some).map_err(|e| format!("{name}: {e}")),
        None => Ok(None),
    }
}

/// Collects the stats of the cgroup at `dir`.
pub fn collect(dir: &Path) -> Result<ContainerStats, String> {
    let cpu = read_parsed(dir, "cpu.stat", parse_flat_keyed)?.unwrap_or_default();
    let events = read_parsed(dir, "memory.events", parse_flat_keyed)?.unwrap_or_default();
    let (total, available) =
        read_parsed(Path::new("/proc"), "meminfo", parse_meminfo)?.unwrap_or_default();
    let value = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    Ok(ContainerStats {
        cpu_usage_usec: value(&cpu, "usage_usec"),
        cpu_user_usec: value(&cpu, "user_usec"),
        cpu_system_usec: value(&cpu, "system_usec"),
        memory_usage_bytes: read_parsed(dir, "memory.current", parse_value)?.unwrap_or(0),
        memory_limit_bytes: read_parsed(dir, "memory.max", parse_limit)?.flatten(),
        swap_usage_bytes: read_parsed(dir, "memory.swap.current", parse_value)?.unwrap_or(0),
        memory_stat: read_parsed(dir, "memory.stat", parse_flat_keyed)?.unwrap_or_default(),
        oom_events: value(&events, "oom"),
        oom_kills: value(&events, "oom_kill"),
        pids_current: read_parsed(dir, "pids.current", parse_value)?.unwrap_or(0),
        pids_limit: read_parsed(dir, "pids.max", parse_limit)?.flatten(),
        guest_memory_total_bytes: total,
        guest_memory_available_bytes: available,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_stat() {
        let m = parse_flat_keyed(
            "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\nnr_periods 0\n\
             nr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n",
        )
        .unwrap();
        assert_eq!(m["usage_usec"], 1234);
        assert_eq!(m["user_usec"], 1000);
        assert_eq!(m["system_usec"], 234);
        assert_eq!(m.len(), 8);
    }

    #[test]
    fn memory_stat() {
        let m = parse_flat_keyed(
            "anon 4096\nfile 8192\nkernel_stack 16384\nslab 18446744073709551615\n",
        )
        .unwrap();
        assert_eq!(m["anon"], 4096);
        assert_eq!(m["file"], 8192);
        assert_eq!(m["kernel_stack"], 16384);
        assert_eq!(m["slab"], u64::MAX);
    }

    #[test]
    fn memory_events() {
        let m = parse_flat_keyed("low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n")
            .unwrap();
        assert_eq!((m["oom"], m["oom_kill"], m["max"]), (2, 1, 12));
        assert!(parse_flat_keyed("").unwrap().is_empty());
    }

    #[test]
    fn flat_keyed_is_strict() {
        for bad in [
            "anon",
            "anon 1 2",
            "anon -1",
            "anon 1.5",
            "anon 99999999999999999999",
            "anon 1\nanon 2",
            "anon 0x10",
        ] {
            assert!(parse_flat_keyed(bad).is_err(), "{bad:?}");
        }
        let e = parse_flat_keyed("a 1\nb x\n").unwrap_err();
        assert_eq!(e, "line 2: b: \"x\" is not a number");
    }

    #[test]
    fn values_and_limits() {
        assert_eq!(parse_value("123\n"), Ok(123));
        assert!(parse_value("").is_err());
        assert!(parse_value("12 3").is_err());
        assert_eq!(parse_limit("max\n"), Ok(None));
        assert_eq!(parse_limit("67108864\n"), Ok(Some(67108864)));
        assert!(parse_limit("maximum").is_err());
        assert!(parse_limit("-1").is_err());
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:         247812 kB\nMemFree:          200000 kB\n\
                    MemAvailable:     210000 kB\nHugePages_Total:       0\n";
        assert_eq!(parse_meminfo(text), Ok((247812 * 1024, 210000 * 1024)));
        assert_eq!(parse_meminfo(""), Ok((0, 0)));
        assert!(parse_meminfo("MemTotal: x kB\n").is_err());
        assert!(parse_meminfo("MemTotal: 12\n").is_err());
        assert!(parse_meminfo("MemTotal: 18446744073709551615 kB\n").is_err());
    }

    #[test]
    fn missing_files_read_as_zero() {
        let dir = std::env::temp_dir().join(format!("husk-stats-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pids.current"), "3\n").unwrap();
        std::fs::write(dir.join("pids.max"), "max\n").unwrap();
        std::fs::write(dir.join("memory.max"), "1048576\n").unwrap();
        let s = collect(&dir).unwrap();
        assert_eq!(s.pids_current, 3);
        assert_eq!(s.pids_limit, None);
        assert_eq!(s.memory_limit_bytes, Some(1048576));
        assert_eq!(s.memory_usage_bytes, 0);
        assert_eq!(s.cpu_usage_usec, 0);
        assert!(s.memory_stat.is_empty());
        assert!(s.guest_memory_total_bytes > 0);
        std::fs::write(dir.join("memory.current"), "lots\n").unwrap();
        assert!(collect(&dir).unwrap_err().starts_with("memory.current: "));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
