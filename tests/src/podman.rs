//! Real podman (and conmon) driving `husk` through `--runtime`, with their own
//! configuration, storage and run directories, and an image imported offline.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crate::{artifact, output_within, require_kvm, vm_dir, COMMAND_TIMEOUT};

/// The image every podman test runs: busybox, imported from a tarball.
pub const IMAGE: &str = "localhost/husk-busybox:latest";

pub struct Podman {
    pub base: PathBuf,
    pub husk_root: PathBuf,
    conf: PathBuf,
    storage: PathBuf,
    husk_config: PathBuf,
}

static SHARED: OnceLock<Podman> = OnceLock::new();

fn must_exist(cmd: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{cmd} not found on PATH: install Debian's podman and conmon (.ci/run does)"
    );
}

impl Podman {
    /// One podman setup per test executable, with the image imported once.
    pub fn shared() -> &'static Podman {
        SHARED.get_or_init(Podman::setup)
    }

    fn setup() -> Podman {
        require_kvm();
        must_exist("podman");
        must_exist("conmon");
        let base = vm_dir("podman");
        let _ = std::fs::remove_dir_all(&base);
        for d in ["storage", "runroot", "tmp", "husk", "image", "networks"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        let husk = artifact("HUSK_BIN_DIR").join("husk");
        // husk's default root: podman's cleanup process (conmon's exit command,
        // which removes a `--rm` container) does not get the `--runtime-flag`s of
        // the command that made the container, so a `root=` flag would send its
        // `husk delete` to another root and leave the state behind (runc alike).
        // Inside the test host /run is a fresh tmpfs.
        let husk_root = PathBuf::from("/run/husk");
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
        let conf = base.join("containers.conf");
        // The runtime entry is what README's podman section documents.
        // Containers default to --network=none; the network tests
        // (tests/tests/network.rs) ask for netavark bridge networks, and
        // netavark is named because podman picks CNI once an image exists.
        std::fs::write(
            &conf,
            format!(
                "[containers]\nnetns = \"none\"\nlog_driver = \"k8s-file\"\n\n\
                 [network]\nnetwork_backend = \"netavark\"\nnetwork_config_dir = {:?}\n\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 runtime = \"husk\"\ntmp_dir = {:?}\nimage_copy_tmp_dir = {:?}\n\n\
                 [engine.runtimes]\nhusk = [{:?}]\n",
                base.join("networks"),
                base.join("tmp"),
                base.join("tmp"),
                husk
            ),
        )
        .unwrap();
        let storage = base.join("storage.conf");
        std::fs::write(
            &storage,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = {:?}\nrunroot = {:?}\n",
                base.join("storage"),
                base.join("runroot")
            ),
        )
        .unwrap();
        let p = Podman {
            base,
            husk_root,
            conf,
            storage,
            husk_config,
        };
        p.import_busybox();
        p
    }

    /// `podman ...` with our configuration (and `--runtime` naming husk's binary,
    /// as a user would).
    pub fn cmd(&self) -> Command {
        let mut c = self.bare_cmd();
        c.arg("--runtime")
            .arg(artifact("HUSK_BIN_DIR").join("husk"))
            // podman does not pass its environment on to conmon and the runtime.
            .arg("--runtime-flag")
            .arg(format!("config={}", self.husk_config.display()));
        c
    }

    /// `podman --runtime crun ...`, same storage and configuration (for comparisons).
    pub fn crun_cmd(&self) -> Command {
        let mut c = self.bare_cmd();
        c.arg("--runtime").arg("crun");
        c
    }

    fn bare_cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage)
            // /var/tmp is read-only in the test host; podman stages images in TMPDIR.
            .env("TMPDIR", self.base.join("tmp"));
        c
    }

    /// Runs `podman ARGS` (stdin /dev/null) within the command timeout.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd();
        c.args(args).stdin(Stdio::null());
        output_within(c, COMMAND_TIMEOUT)
    }

    /// Like [`run`](Self::run) but fails the test unless podman succeeded;
    /// returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "podman {args:?}: {:?}\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Builds a busybox root filesystem and `podman import`s it.
    fn import_busybox(&self) {
        let rootfs = self.base.join("image");
        crate::bundle::busybox_rootfs(&rootfs);
        self.import_rootfs(&rootfs, IMAGE, &["--change", "CMD=[\"/bin/sh\"]"]);
    }

    /// `podman import` of the root filesystem at `rootfs` (through a tarball) as `image`.
    pub fn import_rootfs(&self, rootfs: &std::path::Path, image: &str, opts: &[&str]) {
        let tar = self.base.join("import.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success(), "tar of {} failed", rootfs.display());
        let mut args = vec!["import"];
        args.extend_from_slice(opts);
        args.extend([tar.to_str().unwrap(), image]);
        self.ok(&args);
        let _ = std::fs::remove_file(&tar);
    }
}

/// Samples for `make bench`, in ms: `podman run --rm IMAGE true` with husk and
/// with crun (interleaved), and `podman exec CTR true` into a running husk container.
pub struct BenchSamples {
    pub run_husk: Vec<f64>,
    pub run_crun: Vec<f64>,
    pub exec_husk: Vec<f64>,
}

pub fn bench(runs: usize) -> Result<BenchSamples, String> {
    let p = Podman::shared();
    let timed = |mut c: Command| -> Result<f64, String> {
        c.stdin(Stdio::null());
        let what = format!("{:?}", c.get_args().collect::<Vec<_>>());
        let t = std::time::Instant::now();
        let o = output_within(c, COMMAND_TIMEOUT);
        if !o.status.success() {
            return Err(format!(
                "podman {what}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let mut s = BenchSamples {
        run_husk: Vec::new(),
        run_crun: Vec::new(),
        exec_husk: Vec::new(),
    };
    for i in 0..runs {
        let run = |mut c: Command| {
            c.args(["run", "--rm", IMAGE, "true"]);
            c
        };
        // Alternate which goes first, so neither always gets the warm caches.
        if i % 2 == 0 {
            s.run_husk.push(timed(run(p.cmd()))?);
            s.run_crun.push(timed(run(p.crun_cmd()))?);
        } else {
            s.run_crun.push(timed(run(p.crun_cmd()))?);
            s.run_husk.push(timed(run(p.cmd()))?);
        }
        // Progress on stderr: the test host counts 600 s of silence as a stall.
        eprintln!("podman run {}/{runs} done", i + 1);
    }
    let name = "husk-bench-exec";
    let _ = p.run(&["rm", "-f", "-t", "0", name]);
    let o = p.run(&["run", "-d", "--name", name, IMAGE, "sleep", "100000"]);
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    for _ in 0..runs {
        let mut c = p.cmd();
        c.args(["exec", name, "true"]);
        s.exec_husk.push(timed(c)?);
    }
    let _ = p.run(&["rm", "-f", "-t", "0", name]);
    Ok(s)
}
