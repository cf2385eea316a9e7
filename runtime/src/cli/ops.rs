//! Operations on a running container's guest: ps, pause, resume, events,
//! update (which changes the host cgroup too).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use husk::container::{Status, Store};
use husk::monitor;
use husk_protocol::{ContainerStats, ProcessInfo, Request, Response};
use oci_spec::runtime::{
    LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder,
};
use serde_json::json;

use super::ListFormat;

fn running(store: &Store, id: &str) -> anyhow::Result<husk::container::State> {
    let st = store.load(id)?;
    if matches!(st.status(), Status::Stopped) {
        bail!("container not running");
    }
    Ok(st)
}

pub fn ps(store: &Store, id: &str, format: ListFormat) -> anyhow::Result<()> {
    // runc lists what is left in a stopped container's cgroup: nothing, so
    // the header alone (or `[]`), and success.
    let procs = if store.load(id)?.status() == Status::Stopped {
        Vec::new()
    } else {
        match monitor::agent(store, id)?.request(&Request::ListProcesses { id: id.to_string() })? {
            Response::Processes { processes } => processes,
            other => return Err(husk::vm::unexpected("reply", &other).into()),
        }
    };
    let mut out = std::io::stdout().lock();
    match format {
        // runc prints the pids; ours are the guest's.
        ListFormat::Json => {
            let pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
            writeln!(out, "{}", serde_json::to_string(&pids)?)?;
        }
        ListFormat::Table => {
            writeln!(
                out,
                "{:>5} {:>7} {:>7} {:<4} {:>8} CMD",
                "UID", "PID", "PPID", "STAT", "TIME"
            )?;
            for p in &procs {
                writeln!(out, "{}", ps_line(p))?;
            }
        }
    }
    Ok(())
}

fn ps_line(p: &ProcessInfo) -> String {
    let secs = p.cpu_us / 1_000_000;
    format!(
        "{:>5} {:>7} {:>7} {:<4} {:>2}:{:02}:{:02} {}",
        p.uid,
        p.pid,
        p.ppid,
        // Guest strings: no terminal escapes on the operator's screen.
        husk::untrusted::escape(&p.state, 4),
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        husk::untrusted::text(&p.args.join(" "))
    )
}

pub fn pause(store: &Store, id: &str) -> anyhow::Result<()> {
    let mut st = store.load(id)?;
    // runc freezes a created container as well.
    if !matches!(st.status(), Status::Running | Status::Created) {
        bail!("container not running");
    }
    monitor::agent(store, id)?.expect_ok(&Request::PauseContainer { id: id.to_string() })?;
    st.paused = true;
    store.save(&st)?;
    Ok(())
}

pub fn resume(store: &Store, id: &str) -> anyhow::Result<()> {
    let mut st = store.load(id)?;
    if st.status() != Status::Paused {
        bail!("container not paused");
    }
    monitor::agent(store, id)?.expect_ok(&Request::ResumeContainer { id: id.to_string() })?;
    st.paused = false;
    store.save(&st)?;
    Ok(())
}

fn stats(store: &Store, id: &str) -> anyhow::Result<ContainerStats> {
    match monitor::agent(store, id)?.request(&Request::ContainerStats { id: id.to_string() })? {
        Response::Stats(s) => Ok(*s),
        other => Err(husk::vm::unexpected("reply", &other).into()),
    }
}

/// runc's stats event: cgroup v2 numbers in runc's JSON shape (CPU in ns).
fn stats_event(id: &str, s: &ContainerStats) -> serde_json::Value {
    let limit = s.memory_limit_bytes.unwrap_or(u64::MAX);
    json!({
        "type": "stats",
        "id": id,
        "data": {
            "cpu": {
                "usage": {
                    "total": s.cpu_usage_usec.saturating_mul(1000),
                    "kernel": s.cpu_system_usec.saturating_mul(1000),
                    "user": s.cpu_user_usec.saturating_mul(1000),
                },
                "throttling": {},
            },
            "memory": {
                "usage": {"limit": limit, "usage": s.memory_usage_bytes, "max": 0, "failcnt": 0},
                "swap": {"limit": 0, "usage": s.swap_usage_bytes, "max": 0, "failcnt": 0},
                "raw": s.memory_stat,
            },
            "pids": {"current": s.pids_current, "limit": s.pids_limit.unwrap_or(0)},
            "blkio": {},
            "hugetlb": {},
        }
    })
}

pub fn events(store: &Store, id: &str, interval: &str, once: bool) -> anyhow::Result<()> {
    let interval: Duration = humantime::parse_duration(interval)
        .map_err(|e| anyhow!("invalid interval {interval:?}: {e}"))?;
    if interval.is_zero() {
        bail!("duration interval must be greater than 0");
    }
    if store.load(id)?.status() == Status::Stopped {
        bail!("container with id {id} is not running");
    }
    let mut out = std::io::stdout().lock();
    let first = stats(store, id)?;
    writeln!(out, "{}", stats_event(id, &first))?;
    if once {
        return Ok(());
    }
    // OOM kills are told by the guest cgroup's counter going up; it is polled
    // more often than stats are printed.
    let poll = interval.min(Duration::from_secs(1));
    let mut ooms = first.oom_kills;
    let mut next_stats = Instant::now() + interval;
    loop {
        std::thread::sleep(poll);
        if store
            .load(id)
            .map(|s| s.status() == Status::Stopped)
            .unwrap_or(true)
        {
            return Ok(());
        }
        let s = match stats(store, id) {
            Ok(s) => s,
            // The container may have stopped between the check and the request.
            Err(_)
                if store
                    .load(id)
                    .map(|s| s.status() == Status::Stopped)
                    .unwrap_or(true) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        if s.oom_kills > ooms {
            ooms = s.oom_kills;
            writeln!(out, "{}", json!({"type": "oom", "id": id}))?;
        }
        if Instant::now() >= next_stats {
            next_stats += interval;
            writeln!(out, "{}", stats_event(id, &s))?;
        }
        out.flush()?;
    }
}

#[derive(clap::Args)]
pub struct UpdateArgs {
    /// A JSON file with LinuxResources ("-" for stdin); other flags are then ignored.
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes.
    #[arg(long)]
    pub memory: Option<i64>,
    /// Memory plus swap limit in bytes (-1: unlimited).
    #[arg(long)]
    pub memory_swap: Option<i64>,
    /// Memory soft limit in bytes.
    #[arg(long)]
    pub memory_reservation: Option<i64>,
    #[arg(long)]
    pub cpu_shares: Option<u64>,
    #[arg(long)]
    pub cpu_quota: Option<i64>,
    #[arg(long)]
    pub cpu_period: Option<u64>,
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Maximum number of pids (-1: unlimited).
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// Block I/O weight (10-1000), on the VM's host cgroup (0: leave as is).
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    pub id: String,
}

pub fn update(store: &Store, a: &UpdateArgs) -> anyhow::Result<()> {
    running(store, &a.id)?;
    let resources = match &a.resources {
        Some(p) => {
            let mut text = String::new();
            if p.as_os_str() == "-" {
                std::io::stdin().read_to_string(&mut text)?;
            } else {
                text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
            }
            serde_json::from_str::<LinuxResources>(&text)
                .with_context(|| format!("invalid resources in {}", p.display()))?
        }
        None => resources_from_flags(a)?,
    };
    // The host cgroup holds the whole VM: checked first, changed after the
    // guest took the update, so a refusal on either side changes nothing.
    let host = husk::cgroups::prepare_update(&store.dir(&a.id)?, &resources)?;
    let mut resources = resources;
    husk::cgroups::for_guest(&mut resources);
    monitor::agent(store, &a.id)?.expect_ok(&Request::UpdateContainer {
        id: a.id.clone(),
        resources: Box::new(resources),
    })?;
    if let Some(host) = host {
        host.apply()
            .context("the guest was updated, the host cgroup was not")?;
    }
    Ok(())
}

fn resources_from_flags(a: &UpdateArgs) -> anyhow::Result<LinuxResources> {
    let mut r = LinuxResourcesBuilder::default();
    if a.memory.is_some() || a.memory_swap.is_some() || a.memory_reservation.is_some() {
        let mut m = LinuxMemoryBuilder::default();
        if let Some(v) = a.memory {
            m = m.limit(v);
        }
        if let Some(v) = a.memory_swap {
            m = m.swap(v);
        }
        if let Some(v) = a.memory_reservation {
            m = m.reservation(v);
        }
        r = r.memory(m.build()?);
    }
    if a.cpu_shares.is_some()
        || a.cpu_quota.is_some()
        || a.cpu_period.is_some()
        || a.cpuset_cpus.is_some()
        || a.cpuset_mems.is_some()
    {
        let mut c = LinuxCpuBuilder::default();
        if let Some(v) = a.cpu_shares {
            c = c.shares(v);
        }
        if let Some(v) = a.cpu_quota {
            c = c.quota(v);
        }
        if let Some(v) = a.cpu_period {
            c = c.period(v);
        }
        if let Some(v) = &a.cpuset_cpus {
            c = c.cpus(v.clone());
        }
        if let Some(v) = &a.cpuset_mems {
            c = c.mems(v.clone());
        }
        r = r.cpu(c.build()?);
    }
    if let Some(v) = a.pids_limit {
        r = r.pids(LinuxPidsBuilder::default().limit(v).build()?);
    }
    if let Some(v) = a.blkio_weight {
        r = r.block_io(LinuxBlockIoBuilder::default().weight(v).build()?);
    }
    Ok(r.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: UpdateArgs,
    }

    #[test]
    fn update_flags_become_linux_resources() {
        let a = T::parse_from([
            "update",
            "--memory",
            "1048576",
            "--cpu-quota",
            "50000",
            "--cpu-period",
            "100000",
            "--pids-limit",
            "20",
            "--blkio-weight",
            "500",
            "c",
        ])
        .a;
        let r = resources_from_flags(&a).unwrap();
        assert_eq!(r.block_io().as_ref().unwrap().weight(), Some(500));
        assert_eq!(r.memory().unwrap().limit(), Some(1048576));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50000));
        assert_eq!(r.cpu().as_ref().unwrap().period(), Some(100000));
        assert_eq!(r.pids().unwrap().limit(), 20);
        let none = resources_from_flags(&T::parse_from(["update", "c"]).a).unwrap();
        assert!(none.memory().is_none() && none.cpu().is_none() && none.pids().is_none());
    }

    #[test]
    fn stats_event_has_runcs_shape() {
        let s = ContainerStats {
            cpu_usage_usec: 3,
            cpu_user_usec: 2,
            cpu_system_usec: 1,
            memory_usage_bytes: 4096,
            memory_limit_bytes: None,
            pids_current: 2,
            pids_limit: Some(10),
            ..Default::default()
        };
        let e = stats_event("c", &s);
        assert_eq!(e["type"], "stats");
        assert_eq!(e["id"], "c");
        assert_eq!(e["data"]["cpu"]["usage"]["total"], 3000);
        assert_eq!(e["data"]["cpu"]["usage"]["kernel"], 1000);
        assert_eq!(e["data"]["memory"]["usage"]["usage"], 4096);
        assert_eq!(e["data"]["memory"]["usage"]["limit"], u64::MAX);
        assert_eq!(e["data"]["pids"]["current"], 2);
        assert_eq!(e["data"]["pids"]["limit"], 10);
    }

    #[test]
    fn ps_line_columns() {
        let p = ProcessInfo {
            pid: 7,
            ppid: 1,
            uid: 0,
            state: "S".into(),
            start_us: 0,
            cpu_us: 3_725_000_000,
            exec_id: None,
            args: vec!["sleep".into(), "1000".into()],
        };
        assert_eq!(
            ps_line(&p),
            "    0       7       1 S     1:02:05 sleep 1000"
        );
        let evil = ProcessInfo {
            state: "\x1b[2J".into(),
            args: vec!["\x1b]0;pwned\x07".into(), "a\nb".into()],
            ..p
        };
        let line = ps_line(&evil);
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        assert!(line.ends_with("\\x1b]0;pwned\\x07 a\\nb"), "{line:?}");
    }
}
