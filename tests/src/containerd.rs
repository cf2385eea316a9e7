//! A private containerd for the VM tests and the benchmark: Debian's real
//! containerd with its own config, root, state and sockets under the temp
//! dir, driven with `ctr`, and a busybox image built offline (OCI layout,
//! one plain tar layer) and imported with `ctr image import`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::bundle::TestBundle;
use crate::{artifact, output_within, require_kvm, vm_dir, COMMAND_TIMEOUT};

pub const RUNTIME: &str = "io.containerd.husk.v2";
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
pub const IMAGE: &str = "docker.io/library/husk-busybox:latest";
pub const NAMESPACE: &str = "husktest";
pub const SHIM: &str = "containerd-shim-husk-v2";

pub struct Containerd {
    pub base: PathBuf,
    pub socket: PathBuf,
    /// `HUSK_SHIM_ROOT` of the shims this containerd starts.
    pub shim_root: PathBuf,
    child: Child,
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/bin", "/usr/sbin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Fails (never skips) without containerd and ctr.
pub fn require_containerd() {
    for b in ["containerd", "ctr"] {
        assert!(
            which(b).is_some(),
            "{b} not found: install Debian's containerd package (apt-get install containerd)"
        );
    }
}

/// Paths of every process whose command line contains `needle`, with their pids.
pub fn processes_with(needle: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}

/// Mount points at or below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m == &d || m.starts_with(&format!("{d}/")))
        .collect()
}

impl Containerd {
    /// Starts containerd with the husk shim on its PATH and the artifacts
    /// under test in its `HUSK_CONFIG`; returns once it answers.
    pub fn start(tag: &str) -> Containerd {
        require_kvm();
        require_containerd();
        let bin_dir = artifact("HUSK_BIN_DIR");
        assert!(
            bin_dir.join(SHIM).is_file(),
            "{} missing: build it (cargo build --release -p containerd-shim-husk-v2)",
            bin_dir.join(SHIM).display()
        );
        let base = vm_dir(&format!("ctrd-{tag}"));
        std::fs::create_dir_all(&base).unwrap();
        let husk_config = base.join("husk.toml");
        std::fs::write(
            &husk_config,
            format!(
                "kernel = {:?}\ninitrd = {:?}\nvmm = {:?}\nmemory_mib = 128\n",
                artifact("HUSK_KERNEL"),
                artifact("HUSK_INITRD"),
                artifact("HUSK_VMM")
            ),
        )
        .unwrap();
        let socket = base.join("containerd.sock");
        let config = base.join("config.toml");
        // No CRI, nothing that needs /opt or a network; metrics off.
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  level = "debug"

[plugins."io.containerd.monitor.v1.cgroups"]
  no_prometheus = true
"#,
                root = base.join("root").display(),
                state = base.join("state").display(),
                sock = socket.display(),
            ),
        )
        .unwrap();
        let shim_root = base.join("shims");
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            bin_dir.display()
        );
        let log = std::fs::File::create(base.join("containerd.log")).unwrap();
        let mut cmd = Command::new(which("containerd").unwrap());
        cmd.arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("HUSK_CONFIG", &husk_config)
            .env("HUSK_SHIM_ROOT", &shim_root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(c) = std::env::var_os("HUSK_GUEST_CONSOLE") {
            cmd.env("HUSK_GUEST_CONSOLE", c);
        }
        let child = cmd.spawn().expect("start containerd");
        let c = Containerd {
            base,
            socket,
            shim_root,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let o = c.ctr_out(&["version"]);
            if o.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}\n{}",
                String::from_utf8_lossy(&o.stderr),
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// `ctr` against this containerd, in the test namespace.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new(which("ctr").unwrap());
        c.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(NAMESPACE);
        c
    }

    /// Runs `ctr ARGS` with stdin from /dev/null, within the VM-test deadline.
    pub fn ctr_out(&self, args: &[&str]) -> Output {
        let mut c = self.ctr();
        c.args(args).stdin(Stdio::null());
        output_within(c, COMMAND_TIMEOUT)
    }

    /// Like [`ctr_out`](Self::ctr_out) but the command must succeed.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let o = self.ctr_out(args);
        assert!(
            o.status.success(),
            "ctr {args:?} failed ({}): {}{}\n--- containerd log ---\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log_tail(60)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.base.join("containerd.log")).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let v: Vec<&str> = log.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Builds the busybox image offline and imports it as [`IMAGE`].
    /// [`Containerd::start`] with the busybox image imported.
    pub fn with_busybox(tag: &str) -> Containerd {
        let c = Containerd::start(tag);
        c.import_busybox();
        c
    }

    /// `ctr run --runtime io.containerd.husk.v2 [opts] IMAGE ID ARGS...`
    pub fn run_image(&self, opts: &[&str], id: &str, args: &[&str]) -> Output {
        let mut v = vec!["run", "--runtime", RUNTIME];
        v.extend_from_slice(opts);
        v.push(IMAGE);
        v.push(id);
        v.extend_from_slice(args);
        self.ctr_out(&v)
    }

    /// The task's (pid, status) from `ctr task ls`.
    pub fn task(&self, id: &str) -> Option<(u32, String)> {
        self.ctr_ok(&["task", "ls"]).lines().skip(1).find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 3 && w[0] == id).then(|| (w[1].parse().unwrap_or(0), w[2].to_string()))
        })
    }

    /// Waits up to 60 s for the task to reach `want`; returns its pid.
    pub fn wait_status(&self, id: &str, want: &str) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((pid, st)) = self.task(id) {
                if st == want {
                    return pid;
                }
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never became {want}: {:?}\n{}",
                self.task(id),
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Deletes a task and its container; returns `ctr task delete`'s stderr
    /// (which names a non-zero exit status).
    pub fn remove(&self, id: &str) -> String {
        let o = self.ctr_out(&["task", "delete", id]);
        assert!(
            o.status.success(),
            "task delete {id}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        self.ctr_ok(&["container", "rm", id]);
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// `ctr run -d --config SPEC ID` of `spec` (from `ctr oci spec`, changed by the
    /// test) on a fresh busybox rootfs: with --config, ctr takes no image.
    pub fn run_spec(&self, mut spec: serde_json::Value, id: &str) -> Output {
        let rootfs = self.base.join(format!("{id}-rootfs"));
        crate::bundle::busybox_rootfs(&rootfs);
        spec["root"] = json!({"path": rootfs, "readonly": false});
        let file = self.base.join(format!("{id}-spec.json"));
        std::fs::write(&file, serde_json::to_vec(&spec).unwrap()).unwrap();
        self.ctr_out(&[
            "run",
            "--runtime",
            RUNTIME,
            "-d",
            "--config",
            file.to_str().unwrap(),
            id,
        ])
    }

    /// SIGKILL to the task, wait for STOPPED, delete task and container.
    pub fn kill_remove(&self, id: &str) {
        self.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
        self.wait_status(id, "STOPPED");
        self.remove(id);
    }

    /// husk-vmm processes of this containerd's sandboxes (a jailed VMM is two:
    /// the process the shim started, and the VMM it forked into a pid namespace).
    pub fn husk_vmms(&self) -> Vec<i32> {
        let mut v: Vec<i32> = processes_with(&self.shim_root.to_string_lossy())
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("husk-vmm"))
            .map(|(p, _)| p)
            .collect();
        v.sort();
        v
    }

    /// How many sandbox directories the shims keep.
    pub fn sandbox_dirs(&self) -> usize {
        std::fs::read_dir(&self.shim_root)
            .map(|r| r.count())
            .unwrap_or(0)
    }

    pub fn import_busybox(&self) {
        let tar = build_busybox_image(&self.base.join("image"));
        let out = self.ctr_ok(&[
            "image",
            "import",
            "--base-name",
            "docker.io/library/husk-busybox",
            tar.to_str().unwrap(),
        ]);
        let images = self.ctr_ok(&["image", "ls", "-q"]);
        assert!(
            images.lines().any(|l| l == IMAGE),
            "{IMAGE} not imported: {out}\n{images}"
        );
    }

    /// Processes left from this containerd's shims: shim daemons (they carry
    /// our socket's address) and VMMs (their sockets are under our shim root).
    pub fn leftovers(&self) -> Vec<(i32, String)> {
        let mut v = self.shims();
        v.extend(processes_with(&self.shim_root.to_string_lossy()));
        v
    }

    /// The shim processes serving this containerd.
    pub fn shims(&self) -> Vec<(i32, String)> {
        processes_with(&format!(" -address {} ", self.socket.display()))
            .into_iter()
            .filter(|(_, cmd)| cmd.contains(SHIM))
            .collect()
    }

    /// Everything a deleted task must not leave: shims, VMMs, sandbox
    /// directories, mounts (bundle rootfs, virtio-fs share).
    pub fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let procs = self.leftovers();
            let dirs: Vec<_> = std::fs::read_dir(&self.shim_root)
                .map(|r| r.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            let mounts = mounts_below(&self.shim_root)
                .into_iter()
                .chain(mounts_below(&self.base.join("state")))
                .collect::<Vec<_>>();
            if procs.is_empty() && dirs.is_empty() && mounts.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: processes {procs:?}, sandbox dirs {dirs:?}, mounts {mounts:?}\n{}",
                self.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Shims of a failed test first (they would outlive containerd).
        for (pid, _) in self.leftovers() {
            // SAFETY: killing processes this test's containerd started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for m in mounts_below(&self.base).into_iter().rev() {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: detaching a mount left under our own temp dir.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        if std::thread::panicking() {
            eprintln!("--- containerd log ---\n{}", self.log_tail(200));
        }
    }
}

fn sha256_file(p: &Path) -> String {
    let o = Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum");
    assert!(o.status.success(), "sha256sum {}", p.display());
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Writes `bytes` as a blob of the layout; returns (digest, size).
fn put_blob(blobs: &Path, bytes: &[u8]) -> (String, usize) {
    let tmp = blobs.join("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    let hex = sha256_file(&tmp);
    std::fs::rename(&tmp, blobs.join(&hex)).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

/// An OCI image layout tarball of the busybox test rootfs (uncompressed
/// layer, so its digest is also its diff id).
pub fn build_busybox_image(dir: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    let layout = dir.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let bundle = TestBundle::busybox("image", &["sh"]);
    let layer = dir.join("layer.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(bundle.rootfs())
        .arg("-cf")
        .arg(&layer)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success(), "tar of the busybox rootfs failed");
    let layer_hex = sha256_file(&layer);
    let layer_size = std::fs::metadata(&layer).unwrap().len();
    std::fs::rename(&layer, blobs.join(&layer_hex)).unwrap();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_hex}")]}
    });
    let (config_digest, config_size) = put_blob(&blobs, &serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_hex}"),
            "size": layer_size
        }]
    });
    let (manifest_digest, manifest_size) =
        put_blob(&blobs, &serde_json::to_vec(&manifest).unwrap());
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": "latest"}
        }]
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let tar = dir.join("husk-busybox.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&layout)
        .arg("-cf")
        .arg(&tar)
        .args(["oci-layout", "index.json", "blobs"])
        .status()
        .expect("tar");
    assert!(st.success(), "tar of the image layout failed");
    let _ = std::fs::remove_dir_all(&bundle.dir);
    tar
}

/// `ctr run --rm IMAGE ID true` times (ms) with husk's shim and with runc's,
/// interleaved in one containerd.
pub struct BenchSamples {
    pub run_husk: Vec<f64>,
    pub run_runc: Vec<f64>,
}

pub fn bench(runs: usize) -> Result<BenchSamples, String> {
    let c = Containerd::start("bench");
    c.import_busybox();
    let timed = |runtime: &str, id: String| -> Result<f64, String> {
        let t = Instant::now();
        let o = c.ctr_out(&["run", "--rm", "--runtime", runtime, IMAGE, &id, "true"]);
        if !o.status.success() {
            return Err(format!(
                "ctr run --runtime {runtime}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let mut s = BenchSamples {
        run_husk: Vec::new(),
        run_runc: Vec::new(),
    };
    for i in 0..runs {
        // Alternate which goes first, so neither always gets the warm caches.
        if i % 2 == 0 {
            s.run_husk.push(timed(RUNTIME, format!("h{i}"))?);
            s.run_runc.push(timed(RUNC_RUNTIME, format!("r{i}"))?);
        } else {
            s.run_runc.push(timed(RUNC_RUNTIME, format!("r{i}"))?);
            s.run_husk.push(timed(RUNTIME, format!("h{i}"))?);
        }
        // Progress on stderr: the test host counts 600 s of silence as a stall.
        eprintln!("ctr run {}/{runs} done", i + 1);
    }
    Ok(s)
}
