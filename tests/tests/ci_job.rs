//! The use husk promises: one throwaway VM per CI job (README, "A VM per CI job"). Under
//! podman, a job runs a debootstrapped Debian image with the checkout as a volume, fetches a
//! file from a server on the host side over a bridge network, builds and tests a small C
//! program with the image's gcc, and leaves the binary in the volume. Nothing else on the host
//! changes: no container, husk state, netns, link or mount is left, and the checkout holds
//! only what the job wrote.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use husk_tests::podman::Podman;
use husk_tests::vm_dir;

const IMAGE: &str = "localhost/husk-ci-debian:latest";
const GREETING: &str = "fetched-from-the-host-42";

const HELLO_C: &str = "#include <stdio.h>\n\
int main(void) { printf(\"husk-ci: %s\\n\", GREETING); return 0; }\n";
const MAKEFILE: &str = "GREETING := $(shell cat greeting.txt)\n\
hello: hello.c greeting.txt\n\
\tcc -O2 -Wall -DGREETING='\"$(GREETING)\"' -o hello hello.c\n\
check: hello\n\
\t./hello | grep -qx 'husk-ci: $(GREETING)'\n";
/// The job: fetch over the bridge from the gateway (bash's /dev/tcp: minbase has no curl),
/// build, test, keep the artifact.
const JOB: &str = "set -eu\n\
exec 3<>/dev/tcp/10.199.60.1/18090\n\
printf 'GET /greeting.txt HTTP/1.0\\r\\n\\r\\n' >&3\n\
sed '1,/^\\r$/d' <&3 > greeting.txt\n\
make hello check\n\
cp hello out/hello\n";

/// Files below `dir`, relative.
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut v = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            v.insert(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    v
}

/// What a job could leave on the host.
#[derive(Debug, PartialEq)]
struct HostState {
    containers: String,
    husk_state: BTreeSet<String>,
    netns: String,
    links: BTreeSet<String>,
    /// Mount points, in mount order.
    mounts: Vec<String>,
}

fn host_state(p: &Podman) -> HostState {
    let run = |args: &[&str]| {
        let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    HostState {
        containers: p.ok(&["ps", "-a", "--format", "{{.ID}}"]),
        husk_state: std::fs::read_dir(&p.husk_root)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default(),
        netns: run(&["ip", "netns", "list"]),
        links: run(&["ip", "-o", "link"])
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect(),
        // podman makes /run/netns a shared bind mount of itself the first time it
        // creates a netns, and leaves it (for all later containers): podman's, not
        // the job's.
        mounts: std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| *m != "/run/netns")
            .map(String::from)
            .collect(),
    }
}

/// Kills the server on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_ci_job_builds_and_tests_in_its_own_vm() {
    let rootfs = std::env::var("HUSK_DEBIAN_ROOTFS").expect(
        "HUSK_DEBIAN_ROOTFS not set: run through `make test` (tests/debian-rootfs.sh builds it)",
    );
    assert!(
        Path::new(&rootfs).join("usr/bin/gcc").exists(),
        "{rootfs} has no gcc: tests/debian-rootfs.sh installs gcc, libc6-dev and make"
    );
    let p = Podman::shared();
    let base = vm_dir("ci-job");
    std::fs::create_dir_all(&base).unwrap();

    // The job's image: the Debian root as it is (what `podman import` of a
    // debootstrap gives a CI setup).
    p.import_rootfs(Path::new(&rootfs), IMAGE, &[]);

    // The checkout.
    let checkout = base.join("checkout");
    std::fs::create_dir_all(checkout.join("out")).unwrap();
    std::fs::write(checkout.join("hello.c"), HELLO_C).unwrap();
    std::fs::write(checkout.join("Makefile"), MAKEFILE).unwrap();
    let files_before = tree(&checkout);

    // A server on the host side of the job's network.
    let www = base.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("greeting.txt"), format!("{GREETING}\n")).unwrap();
    let _server = Server(
        Command::new("busybox")
            .args(["httpd", "-f", "-p", "0.0.0.0:18090", "-h"])
            .arg(&www)
            .stdin(Stdio::null())
            .spawn()
            .expect("busybox httpd"),
    );

    let before = host_state(p);
    let net = format!("husk-ci-{}", std::process::id());
    p.ok(&["network", "create", "--subnet", "10.199.60.0/24", &net]);
    let vol = format!("{}:/src", checkout.display());
    let o = p.run(&[
        "run",
        "--rm",
        "--network",
        &net,
        // gcc's cc1 wants more than the default 128 MiB guest; -m sizes the VM.
        "-m",
        "512m",
        "-v",
        &vol,
        "-w",
        "/src",
        IMAGE,
        "bash",
        "-c",
        JOB,
    ]);
    let rm = p.run(&["network", "rm", &net]);
    assert!(
        o.status.success(),
        "the job failed: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        rm.status.success(),
        "podman network rm: {}",
        String::from_utf8_lossy(&rm.stderr)
    );

    // The artifact is in the volume, and it is what the job built from what it fetched.
    let hello = checkout.join("out/hello");
    let run = Command::new(&hello)
        .output()
        .expect("run the job's artifact");
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        format!("husk-ci: {GREETING}")
    );
    let mut expected = files_before.clone();
    expected.extend(["greeting.txt", "hello", "out/hello"].map(String::from));
    assert_eq!(tree(&checkout), expected, "the job wrote other files");

    // Nothing else stays: a --rm job leaves no container, husk state, netns, link or mount.
    let after = host_state(p);
    assert_eq!(after, before, "the job left something on the host");
    p.ok(&["rmi", IMAGE]);
}
