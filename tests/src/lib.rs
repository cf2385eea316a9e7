//! Shared helpers for VM tests and benchmarks: where the built artifacts are,
//! and measurements read from /proc.
//!
//! VM tests never skip: a missing artifact or an unusable /dev/kvm fails the
//! test with the reason.

pub mod bundle;
pub mod containerd;
pub mod netbench;
pub mod netns;
pub mod podman;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use husk::vm::VmSpec;

/// An artifact path from the environment (set by `tests/run-vm-tests.sh`).
pub fn artifact(var: &str) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run VM tests through `make test` (tests/run-vm-tests.sh)")
    });
    assert!(p.exists(), "{var}={} does not exist", p.display());
    p
}

/// Fails (never skips) when this host cannot run KVM guests.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("VM tests need a usable /dev/kvm: {e} (run them through tests/vm-run.sh)");
    }
}

pub fn spec() -> VmSpec {
    require_kvm();
    VmSpec::new(
        artifact("HUSK_VMM"),
        artifact("HUSK_KERNEL"),
        artifact("HUSK_INITRD"),
    )
}

/// A fresh directory per VM under the temp dir.
pub fn vm_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "husk-test-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Resident memory of a process, split into guest RAM (the anonymous mappings
/// whose sizes are the guest RAM regions) and everything else.
#[derive(Debug, Clone, Copy)]
pub struct Rss {
    pub guest_kib: u64,
    pub other_kib: u64,
}

/// Reads `/proc/PID/smaps`; `guest_region_bytes` are the sizes of the guest
/// RAM mappings (one per region).
pub fn rss(pid: u32, guest_region_bytes: &[u64]) -> std::io::Result<Rss> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut out = Rss {
        guest_kib: 0,
        other_kib: 0,
    };
    let mut is_guest = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                // Header line of a mapping: anonymous if it has no path.
                let anon = line.split_whitespace().count() <= 5;
                is_guest = anon && guest_region_bytes.contains(&(b - a));
                continue;
            }
        }
        if first == "Rss:" {
            let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if is_guest {
                out.guest_kib += kib;
            } else {
                out.other_kib += kib;
            }
        }
    }
    Ok(out)
}

/// Guest RAM region sizes for a VM of `memory_mib` (mirrors husk-vmm's layout).
pub fn guest_regions(memory_mib: u32) -> Vec<u64> {
    let size = u64::from(memory_mib) << 20;
    let gap = 0xc000_0000u64;
    if size <= gap {
        vec![size]
    } else {
        vec![gap, size - gap]
    }
}

/// A `husk` command line with its own `--root` and config.toml pointing at the
/// artifacts under test.
pub struct Husk {
    pub root: PathBuf,
    pub config: PathBuf,
}

impl Husk {
    pub fn new(tag: &str) -> Husk {
        require_kvm();
        let base = vm_dir(&format!("husk-{tag}"));
        std::fs::create_dir_all(&base).unwrap();
        let config = base.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "kernel = {:?}\ninitrd = {:?}\nvmm = {:?}\nmemory_mib = 128\n",
                artifact("HUSK_KERNEL"),
                artifact("HUSK_INITRD"),
                artifact("HUSK_VMM")
            ),
        )
        .unwrap();
        Husk {
            root: base.join("root"),
            config,
        }
    }

    pub fn cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(artifact("HUSK_BIN_DIR").join("husk"));
        c.arg("--root")
            .arg(&self.root)
            .env("HUSK_CONFIG", &self.config);
        c
    }

    /// Runs `husk ARGS` with stdin from /dev/null and captures its output.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        let mut c = self.cmd();
        c.args(args).stdin(std::process::Stdio::null());
        output_within(c, COMMAND_TIMEOUT)
    }
}

/// No single command in a VM test may take longer than this (TCG included).
pub const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

/// Like `Command::output`, but kills the command and fails the test if it
/// runs longer than `t`: a hang is a failure, never a stuck CI job.
pub fn output_within(cmd: std::process::Command, t: std::time::Duration) -> std::process::Output {
    try_output_within(cmd, t).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`output_within`], but a command that runs longer than `t` (killed) or cannot
/// be started is an error, not a failed test (the bench counts it and goes on).
pub fn try_output_within(
    mut cmd: std::process::Command,
    t: std::time::Duration,
) -> Result<std::process::Output, String> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    // Readers hand back what they got so far once the command exited: with
    // `create` and `run --detach` the container keeps the pipes open (it
    // inherits the caller's stdio, as with runc), so EOF may never come.
    let reader = |mut r: Box<dyn Read + Send>| {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let b = buf.clone();
        let h = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                b.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        (h, buf)
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout")));
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let deadline = std::time::Instant::now() + t;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| format!("{cmd:?}: {e}"))? {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} did not finish within {t:?}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let grace = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !(out.0.is_finished() && err.0.is_finished()) && std::time::Instant::now() < grace {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let take = |b: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>| b.lock().unwrap().clone();
    Ok(std::process::Output {
        status,
        stdout: take(&out.1),
        stderr: take(&err.1),
    })
}

/// `Child::wait_with_output` with a deadline (the child is killed and the test fails).
pub fn wait_output(child: std::process::Child, t: std::time::Duration) -> std::process::Output {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(t) {
        Ok(r) => r.expect("wait"),
        Err(_) => {
            // SAFETY: killing our own child process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("process {pid} did not finish within {t:?}");
        }
    }
}
