//! `ListProcesses`: every process in a container's cgroup (sub-cgroups
//! included), described from /proc.

use std::collections::HashMap;
use std::path::Path;

use husk_protocol::ProcessInfo;

/// Bounds on the walk of a cgroup tree the container may have grown itself.
const MAX_DEPTH: usize = 32;
const MAX_CGROUPS: usize = 4096;

/// The fields of /proc/PID/stat that `ProcessInfo` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub comm: String,
    pub state: String,
    pub ppid: i32,
    /// Clock ticks.
    pub utime: u64,
    pub stime: u64,
    /// Clock ticks after boot (CLOCK_BOOTTIME).
    pub starttime: u64,
}

/// Parses /proc/PID/stat. `comm` may contain anything but is at most 16
/// bytes and enclosed in the first `(` and the last `)`.
pub fn parse_stat(text: &str) -> Result<Stat, String> {
    let text = text.trim_end();
    let open = text.find(" (").ok_or("no \" (\" before comm")?;
    let close = text.rfind(')').ok_or("no \")\" after comm")?;
    if close < open + 2 {
        return Err("comm is not enclosed in parentheses".into());
    }
    let pid = text[..open]
        .parse::<i32>()
        .map_err(|_| format!("pid {:?} is not a number", &text[..open]))?;
    let comm = text[open + 2..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 of proc(5): state, ppid, ... utime (14), stime
    // (15), ..., starttime (22).
    if rest.len() < 20 {
        return Err(format!(
            "{} fields after comm, want at least 20",
            rest.len()
        ));
    }
    let num = |i: usize, name: &str| -> Result<u64, String> {
        rest[i]
            .parse::<u64>()
            .map_err(|_| format!("{name} {:?} is not a number", rest[i]))
    };
    let state = rest[0];
    if state.chars().count() != 1 || !state.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(format!("state {state:?} is not a letter"));
    }
    Ok(Stat {
        pid,
        comm,
        state: state.to_string(),
        ppid: rest[1]
            .parse::<i32>()
            .map_err(|_| format!("ppid {:?} is not a number", rest[1]))?,
        utime: num(11, "utime")?,
        stime: num(12, "stime")?,
        starttime: num(19, "starttime")?,
    })
}

/// The effective uid from /proc/PID/status (`Uid: real effective saved fs`).
pub fn parse_status_euid(text: &str) -> Option<u32> {
    let line = text.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// /proc/PID/cmdline: NUL-separated arguments (the last one NUL-terminated).
pub fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Every pid in the cgroup at `dir` and below.
pub fn cgroup_pids(dir: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    let mut seen = 0;
    while let Some((d, depth)) = stack.pop() {
        seen += 1;
        if seen > MAX_CGROUPS {
            break;
        }
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        if depth >= MAX_DEPTH {
            continue;
        }
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn clock_ticks() -> u64 {
    // SAFETY: plain sysconf.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn ticks_to_us(ticks: u64, hz: u64) -> u64 {
    (ticks as u128 * 1_000_000 / hz as u128).min(u64::MAX as u128) as u64
}

/// One process, or None if it is gone (or unreadable) by now.
fn describe(pid: i32, hz: u64, execs: &HashMap<i32, String>) -> Option<ProcessInfo> {
    let stat = parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?).ok()?;
    let uid = parse_status_euid(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)?;
    let mut args = parse_cmdline(&std::fs::read(format!("/proc/{pid}/cmdline")).ok()?);
    if args.is_empty() {
        args = vec![format!("[{}]", stat.comm)];
    }
    Some(ProcessInfo {
        pid,
        ppid: stat.ppid,
        uid,
        state: stat.state,
        start_us: ticks_to_us(stat.starttime, hz),
        cpu_us: ticks_to_us(stat.utime.saturating_add(stat.stime), hz),
        exec_id: execs.get(&pid).cloned(),
        args,
    })
}

/// Every process of the cgroup at `dir`, by pid; `execs` names exec leaders.
pub fn list(dir: &Path, execs: &HashMap<i32, String>) -> Vec<ProcessInfo> {
    let hz = clock_ticks();
    cgroup_pids(dir)
        .into_iter()
        .filter_map(|pid| describe(pid, hz, execs))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (sleep) S 1 4242 4242 0 -1 4194560 104 0 0 0 7 3 0 0 20 0 1 0 \
                        12345 2252800 131 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n";

    #[test]
    fn stat() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(
            s,
            Stat {
                pid: 4242,
                comm: "sleep".into(),
                state: "S".into(),
                ppid: 1,
                utime: 7,
                stime: 3,
                starttime: 12345,
            }
        );
    }

    #[test]
    fn stat_comm_with_parens_and_spaces() {
        let s = parse_stat(&STAT.replace("(sleep)", "(a) b (c))")).unwrap();
        assert_eq!(s.comm, "a) b (c)");
        assert_eq!(s.state, "S");
        assert_eq!(s.starttime, 12345);
        let s = parse_stat(&STAT.replace("(sleep)", "()")).unwrap();
        assert_eq!(s.comm, "");
    }

    #[test]
    fn stat_is_strict() {
        for bad in [
            "",
            "4242",
            "4242 (sleep",
            "x (sleep) S 1",
            "4242 (sleep) S 1 2 3",
            &STAT.replace(" S 1 ", " SS 1 "),
            &STAT.replace(" S 1 ", " S x "),
            &STAT.replace(" 7 3 ", " -7 3 "),
            &STAT.replace(" 12345 ", " 1.5 "),
        ] {
            assert!(parse_stat(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn own_stat_parses() {
        // This thread, which is running while it reads its own stat.
        let s = parse_stat(&std::fs::read_to_string("/proc/thread-self/stat").unwrap()).unwrap();
        // SAFETY: plain getters.
        assert_eq!(s.pid, unsafe { libc::gettid() });
        assert_eq!(s.ppid, unsafe { libc::getppid() });
        assert_eq!(s.state, "R");
    }

    #[test]
    fn status_and_cmdline() {
        let status = "Name:\tsleep\nUid:\t1000\t1001\t1002\t1003\nGid:\t0\t0\t0\t0\n";
        assert_eq!(parse_status_euid(status), Some(1001));
        assert_eq!(parse_status_euid("Name:\tx\n"), None);
        assert_eq!(parse_status_euid("Uid:\t1\tx\n"), None);
        assert_eq!(parse_cmdline(b"sleep\x00100\x00"), vec!["sleep", "100"]);
        assert_eq!(parse_cmdline(b"a\x00\x00b\x00"), vec!["a", "", "b"]);
        assert_eq!(parse_cmdline(b"no-nul"), vec!["no-nul"]);
        assert!(parse_cmdline(b"").is_empty());
        assert_eq!(parse_cmdline(b"\xff\x00"), vec!["\u{fffd}"]);
    }

    #[test]
    fn ticks() {
        assert_eq!(ticks_to_us(250, 100), 2_500_000);
        assert_eq!(ticks_to_us(u64::MAX, 1), u64::MAX);
    }
}
