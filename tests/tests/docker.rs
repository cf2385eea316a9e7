//! Docker Engine with husk as a runtime (issue 14 §1): Debian's docker.io
//! (dockerd, its own containerd, containerd-shim-runc-v2 calling `husk` the
//! way it calls runc), husk registered in daemon.json's `runtimes`, an image
//! imported offline from the busybox test rootfs. Every dockerd is private:
//! its data, exec root, socket and key under the temp dir; no bridge and no
//! iptables (`--network none`) except in the one test of Docker's default
//! bridge network and published ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use husk_tests::bundle::busybox_rootfs;
use husk_tests::containerd::{mounts_below, processes_with};
use husk_tests::{artifact, output_within, require_kvm, vm_dir, COMMAND_TIMEOUT};

const IMAGE: &str = "husk-busybox:latest";
const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";

struct Docker {
    base: PathBuf,
    socket: PathBuf,
    child: Child,
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

impl Docker {
    /// A private dockerd with husk as runtime `husk`, the busybox image
    /// imported; returns once it answers.
    fn start(tag: &str) -> Docker {
        Docker::start_with(tag, None)
    }

    /// With `bridge_ip` (`--bip`), Docker's default bridge network, iptables NAT and published
    /// ports; without, no network at all.
    fn start_with(tag: &str, bridge_ip: Option<&str>) -> Docker {
        require_kvm();
        for b in [DOCKER, DOCKERD] {
            assert!(
                Path::new(b).is_file(),
                "{b} not found: install Debian's docker.io (.ci/run does)"
            );
        }
        let base = vm_dir(&format!("dk-{tag}"));
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
        let husk = artifact("HUSK_BIN_DIR").join("husk");
        let mut daemon = serde_json::json!({
            "runtimes": {"husk": {
                "path": husk,
                "runtimeArgs": ["--config", husk_config]
            }},
            // The default /etc/docker/key.json may be on a read-only root.
            "deprecated-key-path": base.join("key.json"),
            "storage-driver": "vfs",
            "bridge": "none",
            "iptables": false,
            "ip-masq": false,
            "ip-forward": false,
            "log-level": "debug"
        });
        if let Some(bip) = bridge_ip {
            let net = daemon.as_object_mut().unwrap();
            net.remove("bridge");
            net.insert("bip".into(), bip.into());
            for k in ["iptables", "ip-masq", "ip-forward"] {
                net.insert(k.into(), true.into());
            }
        }
        let config = base.join("daemon.json");
        std::fs::write(&config, serde_json::to_vec_pretty(&daemon).unwrap()).unwrap();
        let socket = base.join("docker.sock");
        let log = std::fs::File::create(base.join("dockerd.log")).unwrap();
        let child = Command::new(DOCKERD)
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(base.join("data"))
            .arg("--exec-root")
            .arg(base.join("exec"))
            .arg("--pidfile")
            .arg(base.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let d = Docker {
            base,
            socket,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let o = d.run(&["version"]);
            if o.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not come up: {}\n{}",
                err(&o),
                d.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d.import_busybox();
        d
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(DOCKER);
        c.arg("-H").arg(format!("unix://{}", self.socket.display()));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd();
        c.args(args).stdin(Stdio::null());
        output_within(c, COMMAND_TIMEOUT)
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "docker {args:?} failed ({}): {}{}\n--- dockerd log ---\n{}",
            o.status,
            out(&o),
            err(&o),
            self.log_tail(60)
        );
        out(&o)
    }

    fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.base.join("dockerd.log")).unwrap_or_default();
        let v: Vec<&str> = log.lines().collect();
        v[v.len().saturating_sub(n)..].join("\n")
    }

    /// `docker import` of the busybox test rootfs.
    fn import_busybox(&self) {
        let rootfs = self.base.join("image-rootfs");
        busybox_rootfs(&rootfs);
        let tar = self.base.join("busybox.tar");
        let st = Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(st.success(), "tar of the busybox rootfs failed");
        self.ok(&[
            "import",
            "--change",
            "CMD [\"sh\"]",
            tar.to_str().unwrap(),
            IMAGE,
        ]);
        let _ = std::fs::remove_dir_all(&rootfs);
    }

    /// `docker run --runtime husk --network none ARGS`.
    fn husk_run(&self, args: &[&str]) -> Output {
        let mut all = vec!["run", "--runtime", "husk", "--network", "none"];
        all.extend(args);
        self.run(&all)
    }

    /// husk-vmm processes (VM tests run one at a time: any is ours; their
    /// sockets are in husk's short VM directories, Docker's ids being long).
    fn vmms(&self) -> Vec<(i32, String)> {
        processes_with("husk-vmm")
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("--vsock-uds"))
            .collect()
    }

    /// husk's containers in the state root containerd-shim-runc-v2 gives it.
    fn husk_containers(&self) -> Vec<String> {
        let root = self.base.join("exec/runtime-runc/moby");
        let o = output_within(
            {
                let mut c = Command::new(artifact("HUSK_BIN_DIR").join("husk"));
                c.arg("--root").arg(&root).args(["list", "-q"]);
                c
            },
            COMMAND_TIMEOUT,
        );
        out(&o).lines().map(String::from).collect()
    }

    fn state(&self, name: &str) -> String {
        self.ok(&["inspect", "-f", "{{.State.Status}}", name])
            .trim()
            .to_string()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- dockerd log ---\n{}", self.log_tail(200));
        }
        let ids = out(&self.run(&["ps", "-aq"]));
        for id in ids.lines() {
            let _ = self.run(&["rm", "-f", id]);
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (pid, _) in processes_with(&self.base.to_string_lossy()) {
            // SAFETY: killing what this test's dockerd left (its containerd, shims, VMMs).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for m in mounts_below(&self.base).into_iter().rev() {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: detaching a mount left under our own temp dir.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `docker run --rm` in the foreground: output, exit codes, -e/-w/-u,
/// volumes read-write and read-only, a terminal with -t; and Docker's
/// always-present, empty blockIO section is no obstacle.
#[test]
fn docker_run_foreground() {
    let d = Docker::start("fg");
    let o = d.husk_run(&["--rm", IMAGE, "echo", "hello from husk"]);
    assert!(
        o.status.success(),
        "docker run --runtime husk failed: {}\n{}",
        err(&o),
        d.log_tail(60)
    );
    assert_eq!(out(&o).trim(), "hello from husk");

    let o = d.husk_run(&["--rm", IMAGE, "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));

    let o = d.husk_run(&[
        "--rm",
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        "-u",
        "1000",
        IMAGE,
        "sh",
        "-c",
        "echo $FOO $(pwd) $(id -u)",
    ]);
    assert_eq!(out(&o).trim(), "bar /tmp 1000", "{}", err(&o));

    let rw = d.base.join("vol-rw");
    let ro = d.base.join("vol-ro");
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("in"), "from the host\n").unwrap();
    let o = d.husk_run(&[
        "--rm",
        "-v",
        &format!("{}:/rw", rw.display()),
        "-v",
        &format!("{}:/ro:ro", ro.display()),
        IMAGE,
        "sh",
        "-c",
        "cat /ro/in && echo written > /rw/out && ! touch /ro/x 2>/dev/null && echo ro-held",
    ]);
    assert_eq!(out(&o), "from the host\nro-held\n", "{}", err(&o));
    assert_eq!(
        std::fs::read_to_string(rw.join("out")).unwrap(),
        "written\n"
    );
    assert!(!ro.join("x").exists());

    let o = d.husk_run(&["--rm", "-t", IMAGE, "tty"]);
    assert!(out(&o).starts_with("/dev/"), "{}{}", out(&o), err(&o));

    assert!(d.husk_containers().is_empty(), "{:?}", d.husk_containers());
    assert!(d.vmms().is_empty(), "{:?}", d.vmms());
}

/// `docker run -d`, then exec, logs, pause/unpause, stats, top, kill,
/// stop (SIGTERM, then SIGKILL after the timeout) and rm -f, two at once;
/// nothing left behind.
#[test]
fn docker_detached_lifecycle() {
    let d = Docker::start("bg");
    let o = d.husk_run(&[
        "-d",
        "--name",
        "ca",
        IMAGE,
        "sh",
        "-c",
        "echo started; trap '' TERM; while :; do sleep 1; done",
    ]);
    assert!(o.status.success(), "{}\n{}", err(&o), d.log_tail(60));
    let o = d.husk_run(&["-d", "--name", "cb", IMAGE, "sleep", "1000"]);
    assert!(o.status.success(), "{}\n{}", err(&o), d.log_tail(60));
    eventually("ca and cb running", || {
        d.state("ca") == "running" && d.state("cb") == "running"
    });
    eventually("a's output in docker logs", || {
        out(&d.run(&["logs", "ca"])).contains("started")
    });

    assert_eq!(d.ok(&["exec", "ca", "echo", "in a"]).trim(), "in a");
    assert_eq!(
        d.ok(&["exec", "-u", "1000", "cb", "id", "-u"]).trim(),
        "1000"
    );
    let o = d.run(&["exec", "cb", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", err(&o));

    d.ok(&["pause", "cb"]);
    assert_eq!(d.state("cb"), "paused");
    d.ok(&["unpause", "cb"]);
    assert_eq!(d.state("cb"), "running");
    assert_eq!(d.ok(&["exec", "cb", "echo", "thawed"]).trim(), "thawed");

    let stats = d.ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.MemUsage}}",
    ]);
    assert!(
        stats.lines().any(|l| l.starts_with("ca ")) && stats.lines().any(|l| l.starts_with("cb ")),
        "{stats}"
    );
    // top: the guest's processes, through `husk ps`.
    let o = d.run(&["top", "cb"]);
    eprintln!("docker top cb: {}{}", out(&o), err(&o));

    // ca ignores SIGTERM: stop waits its 2 s, then SIGKILL.
    let t = Instant::now();
    d.ok(&["stop", "-t", "2", "ca"]);
    let took = t.elapsed();
    assert!(took >= Duration::from_secs(2), "stopped in {took:?}");
    assert_eq!(d.state("ca"), "exited");
    let code = d.ok(&["inspect", "-f", "{{.State.ExitCode}}", "ca"]);
    assert_eq!(code.trim(), "137");

    d.ok(&["kill", "cb"]);
    eventually("cb exited after kill", || d.state("cb") == "exited");
    d.ok(&["rm", "ca", "cb"]);

    // rm -f of a running one.
    let o = d.husk_run(&["-d", "--name", "cc", IMAGE, "sleep", "1000"]);
    assert!(o.status.success(), "{}", err(&o));
    eventually("cc running", || d.state("cc") == "running");
    d.ok(&["rm", "-f", "cc"]);
    eventually("nothing left", || {
        d.husk_containers().is_empty() && d.vmms().is_empty()
    });
    assert!(d.ok(&["ps", "-aq"]).trim().is_empty());
}

/// Runs the docker command line `args` under script(1), a pty for -it, with
/// `input` as keystrokes.
fn with_pty(d: &Docker, args: &str, input: &str) -> Output {
    let cmd = format!("{DOCKER} -H unix://{} {args}", d.socket.display());
    let mut c = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    use std::io::Write;
    let mut stdin = c.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    // script ends the session when its stdin closes: keep it open until the
    // shell is done (it exits on its own).
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(170));
        drop(stdin);
    });
    husk_tests::wait_output(c, COMMAND_TIMEOUT)
}

/// `docker run -it` and `docker exec -it`: a terminal in the guest, the
/// keystrokes in, the exit code out.
#[test]
fn docker_interactive() {
    let d = Docker::start("it");
    let o = with_pty(
        &d,
        &format!("run -it --rm --runtime husk --network none {IMAGE} sh"),
        "tty; echo sum=$((40+2)); exit 5\n",
    );
    let s = out(&o);
    assert!(s.contains("sum=42"), "{s}\n{}\n{}", err(&o), d.log_tail(60));
    // The guest's terminal is its console, as under podman.
    assert!(s.contains("/dev/pts/") || s.contains("/dev/console"), "{s}");
    assert_eq!(o.status.code(), Some(5), "{s}");

    let o = d.husk_run(&["-d", "--name", "ci", IMAGE, "sleep", "1000"]);
    assert!(o.status.success(), "{}", err(&o));
    eventually("ci running", || d.state("ci") == "running");
    let o = with_pty(&d, "exec -it ci sh", "echo in=$((6*7)); exit 4\n");
    let s = out(&o);
    assert!(s.contains("in=42"), "{s}\n{}", err(&o));
    assert_eq!(o.status.code(), Some(4), "{s}");
    d.ok(&["rm", "-f", "ci"]);
}

/// Docker's default bridge network: libnetwork moves the veth into the netns of the pid husk
/// reported from its prestart hook (during create), and husk carries it into the container at
/// start. The guest's eth0 has the address `docker inspect` reports, `-p` answers from the
/// host, and a second container reaches the first by IP.
#[test]
fn docker_bridge_network_and_published_port() {
    let d = Docker::start_with("br", Some("10.199.20.1/24"));
    let web = d
        .ok(&[
            "run",
            "-d",
            "--runtime",
            "husk",
            "-p",
            "18082:80",
            "-e",
            "WORD=hello-docker-husk",
            IMAGE,
            "sh",
            "-c",
            "mkdir -p /www && echo \"$WORD\" > /www/index.html && exec httpd -f -p 80 -h /www",
        ])
        .trim()
        .to_string();
    let ip = d
        .ok(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.IPAddress}}",
            &web,
        ])
        .trim()
        .to_string();
    let mac = d
        .ok(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.MacAddress}}",
            &web,
        ])
        .trim()
        .to_string();
    assert!(ip.starts_with("10.199.20."), "{ip}");
    let addrs = d.ok(&["exec", &web, "ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(addrs.contains(&format!("inet {ip}/24")), "{ip}: {addrs}");
    let link = d.ok(&["exec", &web, "ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains(&format!("link/ether {mac}")), "{mac}: {link}");

    let deadline = Instant::now() + Duration::from_secs(120);
    let body = loop {
        let got = (|| -> std::io::Result<String> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(
                &"127.0.0.1:18082".parse().unwrap(),
                Duration::from_secs(20),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut b = String::new();
            s.read_to_string(&mut b)?;
            Ok(b)
        })();
        match got {
            Ok(b) if b.contains("200 OK") => break b,
            r if Instant::now() > deadline => panic!("GET 127.0.0.1:18082: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    assert!(body.contains("hello-docker-husk"), "{body}");

    // busybox-static's wget crashes without a full image's NSS setup; nc does not.
    let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 30 {ip} 80");
    let o = d.run(&["run", "--rm", "--runtime", "husk", IMAGE, "sh", "-c", &get]);
    assert!(
        o.status.success() && out(&o).contains("hello-docker-husk"),
        "GET from {ip}: {} {}{}",
        o.status,
        out(&o),
        err(&o)
    );
    d.ok(&["rm", "-f", &web]);
}
