//! `make demo`: what husk does and what it costs, in one screen. Runs where
//! VMs can run (tests/vm-run.sh picks this host or the KVM test host):
//! `husk check`, a bare microVM's boot figures, a container made on the spot
//! from busybox run through `husk run` (what it printed, next to what the
//! same bundle prints under crun), the wall time of `husk run` against
//! `crun run` of the same bundle, and the debootstrapped Debian image when
//! it is cached (`HUSK_DEBIAN_ROOTFS`). Progress goes to stderr.
//!
//! `HUSK_DEMO_RUNS` (default 3): timed runs of each runtime.

use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use husk::vm::Vm;
use husk_tests::bundle::TestBundle;
use husk_tests::{output_within, spec, vm_dir, Husk, COMMAND_TIMEOUT};

/// What the container prints: that it is somewhere else than the host.
const SCRIPT: &str = "echo \"hello from $(hostname), pid $$\"; \
    echo \"kernel $(uname -r), $(nproc) CPU, \
    $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) MiB RAM, \
    $(ls -d /proc/[0-9]* | wc -l) processes\"";

fn progress(what: &str) {
    eprintln!("demo: {what}");
}

/// Runs `cmd` with its output thrown away; its status and wall time in ms.
fn timed(mut cmd: Command, limit: Duration) -> anyhow::Result<(ExitStatus, f64)> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok((st, start.elapsed().as_secs_f64() * 1e3));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Median, min and max.
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  | {l}\n"))
        .collect::<String>()
}

fn crun(root: &str, bundle: &str, id: &str) -> Command {
    let mut c = Command::new("crun");
    c.args(["--root", root, "run", "--bundle", bundle, id]);
    c
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("HUSK_DEMO_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(3);
    let in_test_host = std::env::var_os("HUSK_IN_TEST_HOST").is_some();
    println!(
        "husk demo: every container in its own KVM microVM ({})",
        if in_test_host {
            "here inside the KVM test host, a QEMU TCG emulator: expect ~10x native times"
        } else {
            "on this host's KVM"
        }
    );

    // 1. Can this host run husk?
    let h = Husk::new("demo");
    let o = h.run(&["check"]);
    let check = String::from_utf8_lossy(&o.stdout).into_owned();
    let verdict = check.lines().last().unwrap_or("(no output)");
    let n = check.lines().count().saturating_sub(1);
    println!("check:     {verdict} ({n} checks: `husk check`)");
    if !o.status.success() {
        print!("{}", indent(&check));
        bail!("husk check failed");
    }

    // 2. A bare microVM: how long it takes to boot, by both clocks.
    progress("booting a bare microVM");
    let s = spec();
    let dir = vm_dir("demo-boot");
    let mut vm = Vm::launch(&s, &dir).context("boot failed")?;
    let hello = &vm.hello;
    println!(
        "boot:      microVM up in {:.1} ms (husk-vmm launch -> agent hello; {} vCPU, {} MiB)",
        vm.launch_to_hello.as_secs_f64() * 1e3,
        s.vcpus,
        s.memory_mib
    );
    println!(
        "           guest clock: /init at +{:.1} ms, agent listening at +{:.1} ms; \
         guest kernel {}, husk-agent {}",
        hello.boot_to_init_us as f64 / 1e3,
        hello.boot_to_listen_us as f64 / 1e3,
        hello.kernel_version,
        hello.agent_version
    );
    vm.agent()
        .context("cannot reach the agent")?
        .shutdown()
        .context("shutdown failed")?;
    vm.wait(Duration::from_secs(60))?;
    let _ = std::fs::remove_dir_all(&dir);

    // 3. A container, made on the spot from busybox.
    progress("making a busybox bundle and running it with husk run");
    let bundle = TestBundle::busybox("demo", &["sh", "-c", SCRIPT]);
    let bdir = bundle.dir.to_str().context("bundle path")?.to_string();
    let o = h.run(&["run", "--bundle", &bdir, "demo0"]);
    if !o.status.success() {
        bail!("husk run failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    println!("container: `husk run` of a busybox bundle printed:");
    print!("{}", indent(&String::from_utf8_lossy(&o.stdout)));
    let crun_root = vm_dir("demo-crun");
    let crun_root = crun_root.to_str().context("crun root")?;
    let have_crun = Command::new("crun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have_crun {
        let o = output_within(crun(crun_root, &bdir, "demo0"), COMMAND_TIMEOUT);
        if o.status.success() {
            println!("           the same bundle under crun (the host's kernel):");
            print!("{}", indent(&String::from_utf8_lossy(&o.stdout)));
        } else {
            println!(
                "           crun run failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
    }

    // 4. What it costs: wall time of the whole run, husk and crun.
    let mut husk_ms = Vec::new();
    let mut crun_ms = Vec::new();
    for i in 0..runs {
        progress(&format!("timing run {}/{runs}", i + 1));
        let mut c = h.cmd();
        c.args(["run", "--bundle", &bdir, &format!("demo-t{i}")]);
        let (st, ms) = timed(c, COMMAND_TIMEOUT)?;
        if !st.success() {
            bail!("husk run failed ({st})");
        }
        husk_ms.push(ms);
        if have_crun {
            let (st, ms) = timed(crun(crun_root, &bdir, &format!("t{i}")), COMMAND_TIMEOUT)?;
            if !st.success() {
                bail!("crun run failed ({st})");
            }
            crun_ms.push(ms);
        }
    }
    let (m, lo, hi) = stats(&husk_ms);
    println!("cost:      wall time of the whole run (create, start, wait, delete), {runs} runs:");
    println!("  husk run  median {m:7.1} ms  (min {lo:.1}, max {hi:.1}): a VM booted and gone");
    if crun_ms.is_empty() {
        println!("  crun run  not installed (apt-get install crun to compare)");
    } else {
        let (cm, clo, chi) = stats(&crun_ms);
        println!(
            "  crun run  median {cm:7.1} ms  (min {clo:.1}, max {chi:.1}): namespaces on the \
             host's kernel"
        );
        println!("  husk/crun {:.1}x", m / cm);
    }
    let _ = std::fs::remove_dir_all(crun_root);

    // 5. A real distribution, when tests/debian-rootfs.sh has cached one.
    match std::env::var("HUSK_DEBIAN_ROOTFS")
        .ok()
        .filter(|r| std::path::Path::new(r).join("bin/bash").exists())
    {
        Some(rootfs) => {
            progress("running the debootstrapped Debian image");
            let mut b = TestBundle::busybox(
                "demo-debian",
                &[
                    "/bin/bash",
                    "-c",
                    ". /etc/os-release; echo \"$PRETTY_NAME, bash $BASH_VERSION, \
                     $(dpkg-query -f . -W | wc -c) packages\"",
                ],
            );
            // Shared read-only (in the test host the host's / is read-only).
            b.config["root"] = serde_json::json!({"path": rootfs, "readonly": true});
            b.write();
            let t = Instant::now();
            let o = h.run(&["run", "--bundle", b.dir.to_str().context("path")?, "deb"]);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if o.status.success() {
                println!("debian:    `husk run` of the debootstrapped image ({ms:.0} ms):");
                print!("{}", indent(&String::from_utf8_lossy(&o.stdout)));
            } else {
                bail!(
                    "husk run of the Debian image failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
        None => println!(
            "debian:    no cached Debian image (make test-rootfs makes one; the demo then runs it)"
        ),
    }
    let _ = std::fs::remove_dir_all(&bundle.dir);
    Ok(())
}
