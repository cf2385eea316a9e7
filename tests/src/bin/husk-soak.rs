//! `make soak`: long runs through the husk CLI (and containerd's shim) that
//! must leave nothing behind and must not grow the long-lived processes.
//!
//! - `SOAK_CYCLES` (default 500) create/start/kill -9/delete cycles, each
//!   its own container and microVM;
//! - `SOAK_EXECS` (default 200) `husk exec`s in one long-lived container;
//! - `SOAK_CTR_EXECS` (default 100) `ctr task exec`s in one long-lived task
//!   under containerd (0 skips it);
//! - `SOAK_FIRST` (default 0): the number of the first cycle, when
//!   tests/soak.sh runs the cycles in segments, each in a fresh test host.
//!
//! The long-lived processes (the monitor, husk-vmm's waiter and its jailed
//! VMM; under containerd the shim and the VMM) are sampled (open fds,
//! VmRSS; the VMM also without guest RAM) after a short warm-up, every 50
//! cycles or execs, and at the end, with host-wide counters (mounts,
//! processes, unix sockets, husk cgroups). It fails if a process grows by
//! more than [`FD_SLACK`] fds or by more than [`RSS_SLACK_KIB`] and
//! [`RSS_SLACK_PCT`] % of RSS (guest RAM excluded), or if anything is left
//! once everything is deleted.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use husk_tests::bundle::TestBundle;
use husk_tests::containerd::{mounts_below, processes_with, Containerd, IMAGE, RUNTIME};
use husk_tests::{guest_regions, output_within, rss, Husk};

const FD_SLACK: i64 = 2;
const RSS_SLACK_KIB: i64 = 2048;
const RSS_SLACK_PCT: i64 = 10;
const SAMPLE_EVERY: usize = 50;
const WARMUP: usize = 5;
/// The VM size husk's config.toml gives (tests/src/lib.rs) to a container without limits.
const GUEST_MIB: u32 = 128;
/// A microVM lost to QEMU TCG's emulated nested SVM (docs/architecture.md,
/// "Tests"; tests/run-vm-tests.sh reruns these): counted, not a soak failure.
const LOST_GUEST: [&str; 9] = [
    "guest crashed",
    "agent not ready after",
    "exited before the agent was ready",
    "lost the VM",
    "agent: connection closed",
    "agent: I/O error: Resource temporarily unavailable",
    "agent: I/O error: Connection reset by peer",
    "no answer within",
    "agent: no reply within",
];

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn show(o: &Output) -> String {
    format!(
        "{} stdout {:?} stderr {:?}",
        o.status,
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr).trim()
    )
}

// ---- measurements ------------------------------------------------------------------------

fn fds(pid: i32) -> Option<i64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as i64)
}

fn vm_rss_kib(pid: i32) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

fn ppid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
}

/// A process to watch: (name, pid, whether it holds guest RAM).
#[derive(Clone)]
struct Watched {
    name: String,
    pid: i32,
    guest: bool,
}

#[derive(Clone, Copy, Default)]
struct ProcSample {
    fds: i64,
    rss_kib: i64,
    /// RSS without guest RAM (the VMM's own memory); = rss_kib otherwise.
    host_kib: i64,
}

fn sample_proc(w: &Watched) -> anyhow::Result<ProcSample> {
    let gone = || anyhow::anyhow!("{} ({}) is gone", w.name, w.pid);
    let fds = fds(w.pid).ok_or_else(gone)?;
    let rss_kib = vm_rss_kib(w.pid).ok_or_else(gone)?;
    let host_kib = if w.guest {
        let r = rss(w.pid as u32, &guest_regions(GUEST_MIB)).map_err(|_| gone())?;
        r.other_kib as i64
    } else {
        rss_kib
    };
    Ok(ProcSample {
        fds,
        rss_kib,
        host_kib,
    })
}

/// Host-wide counters that a leak of any kind moves.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct Host {
    mounts: i64,
    /// Processes with a command line (kernel threads come and go).
    processes: i64,
    unix_sockets: i64,
    husk_cgroups: i64,
}

fn sample_host() -> Host {
    let count = |p: &str| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().count() as i64)
            .unwrap_or(0)
    };
    let processes = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| !c.is_empty()))
                .count() as i64
        })
        .unwrap_or(0);
    let husk_cgroups = std::fs::read_dir("/sys/fs/cgroup/husk")
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count() as i64)
        .unwrap_or(0);
    Host {
        mounts: count("/proc/self/mountinfo"),
        processes,
        unix_sockets: count("/proc/net/unix").saturating_sub(1),
        husk_cgroups,
    }
}

struct Table {
    title: String,
    watched: Vec<Watched>,
    rows: Vec<(String, f64, Vec<ProcSample>, Host)>,
    started: Instant,
}

impl Table {
    fn new(title: &str, watched: Vec<Watched>) -> Table {
        Table {
            title: title.to_string(),
            watched,
            rows: Vec::new(),
            started: Instant::now(),
        }
    }

    fn sample(&mut self, label: &str) -> anyhow::Result<()> {
        let procs = self
            .watched
            .iter()
            .map(sample_proc)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let host = sample_host();
        let t = self.started.elapsed().as_secs_f64();
        let cells: Vec<String> = self
            .watched
            .iter()
            .zip(&procs)
            .map(|(w, s)| format!("{} fds {} rss {}K", w.name, s.fds, s.rss_kib))
            .collect();
        eprintln!(
            "soak: sample {label} at {t:.0}s: {} {host:?}",
            cells.join(", ")
        );
        self.rows.push((label.to_string(), t, procs, host));
        Ok(())
    }

    fn print(&self) {
        println!("\n## {}\n", self.title);
        let mut head = format!("| {:<14} | {:>7} |", "sample", "time s");
        let mut rule = format!("|{:-<16}|{:->9}|", "", "");
        for w in &self.watched {
            let rss = if w.guest { "RSS/host KiB" } else { "RSS KiB" };
            head += &format!(
                " {:>6} | {:>20} |",
                format!("{} fds", w.name),
                format!("{} {rss}", w.name)
            );
            rule += &format!("{:->8}|{:->22}|", "", "");
        }
        head += &format!(
            " {:>6} | {:>5} | {:>5} | {:>7} |",
            "mounts", "procs", "unix", "cgroups"
        );
        rule += &format!("{:->8}|{:->7}|{:->7}|{:->9}|", "", "", "", "");
        println!("{head}\n{rule}");
        for (label, t, procs, host) in &self.rows {
            let mut line = format!("| {label:<14} | {t:>7.0} |");
            for (w, s) in self.watched.iter().zip(procs) {
                let rss = if w.guest {
                    format!("{}/{}", s.rss_kib, s.host_kib)
                } else {
                    s.rss_kib.to_string()
                };
                line += &format!(" {:>6} | {:>20} |", s.fds, rss);
            }
            line += &format!(
                " {:>6} | {:>5} | {:>5} | {:>7} |",
                host.mounts, host.processes, host.unix_sockets, host.husk_cgroups
            );
            println!("{line}");
        }
    }

    /// Growth from the first sample to the last beyond the bounds.
    fn growth_errors(&self) -> Vec<String> {
        let (Some(first), Some(last)) = (self.rows.first(), self.rows.last()) else {
            return vec![format!("{}: no samples", self.title)];
        };
        let mut errs = Vec::new();
        for (i, w) in self.watched.iter().enumerate() {
            let (a, b) = (first.2[i], last.2[i]);
            if b.fds - a.fds > FD_SLACK {
                errs.push(format!(
                    "{}: {} fds grew {} -> {} (bound +{FD_SLACK})",
                    self.title, w.name, a.fds, b.fds
                ));
            }
            let bound = RSS_SLACK_KIB.max(a.host_kib * RSS_SLACK_PCT / 100);
            if b.host_kib - a.host_kib > bound {
                errs.push(format!(
                    "{}: {} RSS{} grew {} KiB -> {} KiB (bound +{bound} KiB)",
                    self.title,
                    w.name,
                    if w.guest { " without guest RAM" } else { "" },
                    a.host_kib,
                    b.host_kib
                ));
            }
        }
        errs
    }
}

// ---- husk CLI ----------------------------------------------------------------------------

const TIMEOUT: Duration = Duration::from_secs(180);

fn husk(h: &Husk, args: &[&str]) -> Output {
    let mut c = h.cmd();
    c.args(args).stdin(Stdio::null());
    output_within(c, TIMEOUT)
}

fn husk_ok(h: &Husk, args: &[&str]) -> anyhow::Result<Output> {
    let o = husk(h, args);
    if !o.status.success() {
        bail!("husk {}: {}", args.join(" "), show(&o));
    }
    Ok(o)
}

fn status(h: &Husk, id: &str) -> Option<String> {
    let o = husk(h, &["state", id]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    v["status"].as_str().map(str::to_string)
}

fn wait_stopped(h: &Husk, id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(h, id).as_deref() != Some("stopped") {
        if Instant::now() > deadline {
            bail!("{id} did not stop after SIGKILL: {:?}", status(h, id));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// One create/start/kill -9/delete cycle.
fn cycle(h: &Husk, bundle: &Path, id: &str) -> anyhow::Result<()> {
    husk_ok(h, &["create", "--bundle", bundle.to_str().unwrap(), id])?;
    husk_ok(h, &["start", id])?;
    husk_ok(h, &["kill", id, "KILL"])?;
    wait_stopped(h, id)?;
    husk_ok(h, &["delete", id])?;
    Ok(())
}

/// Everything left under `root` or by its containers (none running).
fn leftovers(root: &Path, keep: Option<&str>) -> Vec<String> {
    let r = root.to_string_lossy().into_owned();
    let mut v: Vec<String> = Vec::new();
    // The long-lived container's: its state dir, its monitor.
    let mine = |s: &str| {
        keep.is_some_and(|k| {
            s.contains(&format!("{r}/{k}/")) || s.contains(&format!("{r} __monitor {k} "))
        })
    };
    v.extend(
        processes_with(&r)
            .into_iter()
            .filter(|(_, c)| !mine(c))
            .map(|(p, c)| format!("process {p}: {c}")),
    );
    v.extend(
        mounts_below(root)
            .into_iter()
            .filter(|m| !mine(m))
            .map(|m| format!("mount {m}")),
    );
    if let Ok(d) = std::fs::read_dir(root) {
        v.extend(
            d.flatten()
                .filter(|e| Some(e.file_name().to_string_lossy().as_ref()) != keep)
                .map(|e| format!("state {}", e.path().display())),
        );
    }
    if let Ok(d) = std::fs::read_dir("/sys/fs/cgroup/husk") {
        v.extend(
            d.flatten()
                .filter(|e| e.path().is_dir())
                .filter(|e| Some(e.file_name().to_string_lossy().as_ref()) != keep)
                .map(|e| format!("cgroup {}", e.path().display())),
        );
    }
    v.extend(
        std::fs::read_to_string("/proc/net/unix")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(7))
            .filter(|p| p.contains(&r) && !mine(p))
            .map(|p| format!("socket {p}")),
    );
    v
}

fn wait_clean(root: &Path, keep: Option<&str>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = leftovers(root, keep);
        if l.is_empty() || Instant::now() > deadline {
            return l;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The long-lived container's processes: monitor, waiter, VMM.
fn husk_watched(h: &Husk, id: &str) -> anyhow::Result<Vec<Watched>> {
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h.root.join(id).join("state.json"))?)?;
    let monitor = st["pid"].as_i64().context("pid in state.json")? as i32;
    let waiter = st["vmm_pid"].as_i64().context("vmm_pid in state.json")? as i32;
    let vmm =
        jailed_child(waiter).with_context(|| format!("husk-vmm {waiter} has no VMM child"))?;
    Ok(vec![
        Watched {
            name: "monitor".into(),
            pid: monitor,
            guest: false,
        },
        Watched {
            name: "waiter".into(),
            pid: waiter,
            guest: false,
        },
        Watched {
            name: "vmm".into(),
            pid: vmm,
            guest: true,
        },
    ])
}

/// The child of `parent` (husk-vmm's jailed VMM of its waiter).
fn jailed_child(parent: i32) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .find(|p| ppid(*p) == Some(parent))
}

struct Outcome {
    lost_guests: usize,
    errors: Vec<String>,
}

fn is_lost_guest(e: &str) -> bool {
    LOST_GUEST.iter().any(|s| e.contains(s))
}

fn husk_soak(first: usize, cycles: usize, execs: usize) -> anyhow::Result<Outcome> {
    let h = Husk::new("soak");
    let mut out = Outcome {
        lost_guests: 0,
        errors: Vec::new(),
    };
    let before = sample_host();
    let short = TestBundle::busybox("soak-cycle", &["sleep", "1000"]);
    let long = TestBundle::busybox("soak-long", &["sleep", "1000000"]);
    let lid = "soak-long";
    husk_ok(&h, &["create", "--bundle", long.dir.to_str().unwrap(), lid])?;
    husk_ok(&h, &["start", lid])?;
    let exec = |i: usize| -> anyhow::Result<()> {
        let word = format!("exec-{i}");
        let o = husk_ok(&h, &["exec", lid, "echo", &word])?;
        if String::from_utf8_lossy(&o.stdout).trim() != word {
            bail!("exec {i}: {}", show(&o));
        }
        Ok(())
    };
    for i in 0..WARMUP {
        exec(i)?;
    }
    let mut table = Table::new(
        &format!(
            "husk CLI: {cycles} create/start/kill -9/delete cycles (from #{first}), then {execs} execs in {lid}"
        ),
        husk_watched(&h, lid)?,
    );
    table.sample("start")?;
    let t = Instant::now();
    for i in first..first + cycles {
        let id = format!("soak-{i}");
        if let Err(e) = cycle(&h, &short.dir, &id) {
            let e = format!("cycle {i}: {e:#}");
            eprintln!("soak: {e}");
            if is_lost_guest(&e) {
                out.lost_guests += 1;
            } else {
                out.errors.push(e);
            }
            let o = husk(&h, &["delete", "--force", &id]);
            if !o.status.success() {
                out.errors
                    .push(format!("cycle {i}: delete --force: {}", show(&o)));
            }
        }
        let left = wait_clean(&h.root, Some(lid));
        if !left.is_empty() {
            out.errors
                .push(format!("cycle {i}: left behind: {}", left.join("; ")));
            break;
        }
        eprintln!(
            "soak: cycle {}/{} done ({:.1}s)",
            i + 1,
            first + cycles,
            t.elapsed().as_secs_f64()
        );
        if (i + 1 - first).is_multiple_of(SAMPLE_EVERY) {
            table.sample(&format!("cycle {}", i + 1))?;
        }
    }
    let cycles_s = t.elapsed().as_secs_f64();
    if !cycles.is_multiple_of(SAMPLE_EVERY) {
        table.sample(&format!("cycle {}", first + cycles))?;
    }
    let t = Instant::now();
    for i in 0..execs {
        if let Err(e) = exec(WARMUP + i) {
            out.errors.push(format!("{e:#}"));
            break;
        }
        eprintln!("soak: exec {}/{execs} done", i + 1);
        if (i + 1).is_multiple_of(SAMPLE_EVERY) {
            table.sample(&format!("exec {}", i + 1))?;
        }
    }
    let execs_s = t.elapsed().as_secs_f64();
    if !execs.is_multiple_of(SAMPLE_EVERY) {
        table.sample(&format!("exec {execs}"))?;
    }
    table.print();
    println!(
        "\ncycles: {cycles} in {cycles_s:.0} s ({:.2} s each), {} lost guest(s); execs: {execs} in {execs_s:.0} s ({:.3} s each)",
        cycles_s / cycles.max(1) as f64,
        out.lost_guests,
        execs_s / execs.max(1) as f64
    );
    out.errors.extend(table.growth_errors());

    husk_ok(&h, &["kill", lid, "KILL"])?;
    wait_stopped(&h, lid)?;
    husk_ok(&h, &["delete", lid])?;
    let left = wait_clean(&h.root, None);
    let after = sample_host();
    println!("host before: {before:?}\nhost after:  {after:?}\nleftovers: {left:?}");
    if !left.is_empty() {
        out.errors.push(format!("left behind: {}", left.join("; ")));
    }
    if after != before {
        out.errors.push(format!(
            "host counters differ after everything was deleted: before {before:?}, after {after:?}"
        ));
    }
    Ok(out)
}

// ---- containerd --------------------------------------------------------------------------

fn ctr_soak(execs: usize) -> anyhow::Result<Outcome> {
    let c = Containerd::start("soak");
    c.import_busybox();
    let mut out = Outcome {
        lost_guests: 0,
        errors: Vec::new(),
    };
    let id = "soak-ctr";
    let o = c.ctr_out(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        id,
        "sleep",
        "1000000",
    ]);
    if !o.status.success() {
        bail!("ctr run: {}", show(&o));
    }
    let exec = |i: usize| -> anyhow::Result<()> {
        let word = format!("exec-{i}");
        let eid = format!("e{i}");
        let o = c.ctr_out(&["task", "exec", "--exec-id", &eid, id, "echo", &word]);
        if !o.status.success() || String::from_utf8_lossy(&o.stdout).trim() != word {
            bail!("ctr task exec {i}: {}\n{}", show(&o), c.log_tail(30));
        }
        Ok(())
    };
    for i in 0..WARMUP {
        exec(i)?;
    }
    let shims = c.shims();
    if shims.len() != 1 {
        bail!("expected one shim: {shims:?}");
    }
    let waiter = processes_with(&c.shim_root.to_string_lossy())
        .into_iter()
        .filter(|(p, cmd)| cmd.contains("husk-vmm") && ppid(*p) == Some(shims[0].0))
        .map(|(p, _)| p)
        .next()
        .context("no husk-vmm under the shim")?;
    let vmm = jailed_child(waiter).context("husk-vmm has no VMM child")?;
    let mut table = Table::new(
        &format!("containerd: {execs} ctr task execs in {id}"),
        vec![
            Watched {
                name: "shim".into(),
                pid: shims[0].0,
                guest: false,
            },
            Watched {
                name: "vmm".into(),
                pid: vmm,
                guest: true,
            },
        ],
    );
    table.sample("start")?;
    let t = Instant::now();
    for i in 0..execs {
        if let Err(e) = exec(WARMUP + i) {
            out.errors.push(format!("{e:#}"));
            break;
        }
        eprintln!("soak: ctr exec {}/{execs} done", i + 1);
        if (i + 1).is_multiple_of(SAMPLE_EVERY) {
            table.sample(&format!("exec {}", i + 1))?;
        }
    }
    let execs_s = t.elapsed().as_secs_f64();
    if !execs.is_multiple_of(SAMPLE_EVERY) {
        table.sample(&format!("exec {execs}"))?;
    }
    table.print();
    println!(
        "\nctr execs: {execs} in {execs_s:.0} s ({:.3} s each)",
        execs_s / execs.max(1) as f64
    );
    out.errors.extend(table.growth_errors());
    for args in [
        &["task", "kill", "-s", "SIGKILL", id][..],
        &["task", "delete", "--force", id],
        &["container", "rm", id],
    ] {
        let o = c.ctr_out(args);
        if !o.status.success() {
            out.errors.push(format!("ctr {args:?}: {}", show(&o)));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // assert_clean panics with what is left: catch it as a soak failure.
    let clean = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.assert_clean()));
    if clean.is_err() {
        out.errors
            .push("containerd: left behind (see above)".into());
    }
    println!(
        "containerd leftovers: {}",
        if clean.is_ok() { "none" } else { "SEE ABOVE" }
    );
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let cycles = env_count("SOAK_CYCLES", 500);
    let execs = env_count("SOAK_EXECS", 200);
    let ctr_execs = env_count("SOAK_CTR_EXECS", 100);
    let first = env_count("SOAK_FIRST", 0);
    husk_tests::require_kvm();
    // Fails loudly rather than later: these are needed by every cycle.
    for v in ["HUSK_VMM", "HUSK_KERNEL", "HUSK_INITRD", "HUSK_BIN_DIR"] {
        husk_tests::artifact(v);
    }
    let t = Instant::now();
    let mut errors = Vec::new();
    let mut lost = 0;
    let h = husk_soak(first, cycles, execs)?;
    lost += h.lost_guests;
    errors.extend(h.errors);
    if ctr_execs > 0 {
        let c = ctr_soak(ctr_execs)?;
        lost += c.lost_guests;
        errors.extend(c.errors);
    }
    println!(
        "\nsoak: {:.0} s in all; {lost} guest(s) lost to the emulator",
        t.elapsed().as_secs_f64()
    );
    if !errors.is_empty() {
        for e in &errors {
            println!("SOAK FAILURE: {e}");
        }
        bail!("{} soak failure(s)", errors.len());
    }
    println!("SOAK OK");
    Ok(())
}
