//! What the runtime enforces on the host around a real VM (review F3, F10,
//! F14): the sandbox cgroup's device policy, private state and VM
//! directories under any umask, and no joining a cgroup someone else uses.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use husk_tests::bundle::TestBundle;
use husk_tests::{output_within, vm_dir, Husk, COMMAND_TIMEOUT};
use serde_json::Value;

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn cgroup_dir(rel: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'))
}

fn wait_running(h: &Husk, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let o = h.run(&["state", id]);
        assert!(o.status.success(), "state {id}: {}", err(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        if v["status"] == "running" {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never ran: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn open_errno(p: &CString) -> i32 {
    // SAFETY: plain open/close.
    unsafe {
        let fd = libc::open(
            p.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            libc::close(fd);
            0
        } else {
            *libc::__errno_location()
        }
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// The errno of opening each of `paths` from a child moved into cgroup `cg`.
fn errnos_inside(cg: &Path, paths: &[CString]) -> Vec<i32> {
    let procs = cstr(&cg.join("cgroup.procs"));
    let mut pipe = [0; 2];
    // SAFETY: a pipe for the child's answers.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the child makes syscalls on prepared buffers only, then _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(100);
            }
            for p in paths {
                let e = open_errno(p);
                libc::write(pipe[1], (&e as *const i32).cast(), 4);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: parent side of the pipe and our own child.
    unsafe {
        libc::close(pipe[1]);
        let mut out = vec![0i32; paths.len()];
        // The child writes one answer at a time: read until its EOF.
        let want = 4 * paths.len();
        let mut n = 0usize;
        while n < want {
            let r = libc::read(
                pipe[0],
                out.as_mut_ptr().cast::<u8>().add(n).cast(),
                want - n,
            );
            if r <= 0 {
                break;
            }
            n += r as usize;
        }
        libc::close(pipe[0]);
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "child {st:#x}"
        );
        assert_eq!(n, want);
        out
    }
}

#[test]
fn sandbox_cgroup_denies_every_device_but_the_vms() {
    let h = Husk::new("limits");
    let mut b = TestBundle::busybox("limits", &["sleep", "1000"]);
    let cg = format!("/husk_limits_{}", std::process::id());
    b.config["linux"]["cgroupsPath"] = cg.clone().into();
    b.write();
    // Under umask 000 too, the state and VM directories are root's only.
    let mut c = h.cmd();
    c.args(["run", "--detach", "--bundle", b.dir.to_str().unwrap(), "d1"])
        .stdin(std::process::Stdio::null());
    // SAFETY: umask is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let o = output_within(c, COMMAND_TIMEOUT);
    // The VM runs: husk-vmm opened /dev/kvm after joining the cgroup.
    assert!(o.status.success(), "{}", err(&o));
    wait_running(&h, "d1");
    let state = h.root.join("d1");
    let vm = husk::monitor::vm_dir(&state);
    for d in [&h.root, &state, &vm] {
        let m = std::fs::metadata(d).unwrap().permissions().mode() & 0o7777;
        assert_eq!(m, 0o700, "{}", d.display());
    }

    let nodes = vm_dir("devnodes");
    std::fs::create_dir_all(&nodes).unwrap();
    let node = |name: &str, kind: libc::mode_t, maj, min| {
        let p = nodes.join(name);
        // SAFETY: mknod in our own temp dir.
        let r = unsafe { libc::mknod(cstr(&p).as_ptr(), kind | 0o600, libc::makedev(maj, min)) };
        assert_eq!(r, 0, "mknod {name}: {}", std::io::Error::last_os_error());
        cstr(&p)
    };
    let paths = vec![
        node("mem", libc::S_IFCHR, 1, 1),
        node("blk", libc::S_IFBLK, 7, 0),
        node("null", libc::S_IFCHR, 1, 3),
        cstr(Path::new("/dev/null")),
        cstr(Path::new("/dev/kvm")),
    ];
    // Outside the cgroup: allowed (ENXIO: allowed, no such device), or
    // the file system has no devices and nothing can be told.
    let outside: Vec<i32> = paths.iter().map(open_errno).collect();
    let inside = errnos_inside(&cgroup_dir(&cg), &paths);
    let _ = std::fs::remove_dir_all(&nodes);
    let o = h.run(&["delete", "--force", "d1"]);
    assert!(o.status.success(), "{}", err(&o));
    for (i, what) in ["char 1:1", "block 7:0"].iter().enumerate() {
        if matches!(outside[i], 0 | libc::ENXIO) {
            assert_eq!(inside[i], libc::EPERM, "{what} must be denied ({inside:?})");
        }
    }
    if outside[2] == 0 {
        assert_eq!(inside[2], 0, "a 1:3 node must stay usable");
    }
    assert_eq!(inside[3], 0, "/dev/null must stay usable");
    assert_eq!(inside[4], 0, "/dev/kvm must stay usable");
    assert!(
        matches!(outside[0], 0 | libc::ENXIO) || matches!(outside[1], 0 | libc::ENXIO),
        "no device node usable outside: {outside:?}"
    );
    assert!(!cgroup_dir(&cg).exists(), "cgroup left after delete");
}

#[test]
fn a_cgroup_with_processes_is_refused() {
    let h = Husk::new("busycg");
    let cg = format!("/husk_busy_{}", std::process::id());
    let dir = cgroup_dir(&cg);
    std::fs::create_dir_all(&dir).unwrap();
    let mut sleep = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    std::fs::write(dir.join("cgroup.procs"), sleep.id().to_string()).unwrap();
    let before = std::fs::read_to_string(dir.join("pids.max")).ok();

    let mut b = TestBundle::busybox("busycg", &["true"]);
    b.config["linux"]["cgroupsPath"] = cg.clone().into();
    b.write();
    let o = h.run(&["create", "--bundle", b.dir.to_str().unwrap(), "b1"]);
    let e = err(&o);
    let alive = sleep.try_wait().unwrap().is_none();
    let after = std::fs::read_to_string(dir.join("pids.max")).ok();
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    let _ = sleep.kill();
    let _ = sleep.wait();
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("container's cgroup is not empty"), "{e}");
    assert!(alive, "the cgroup's process was killed");
    assert_eq!(before, after, "the cgroup's limits were changed");
    assert_eq!(procs.trim(), sleep.id().to_string());
    assert!(
        !h.root.join("b1").exists(),
        "state left by a refused create"
    );
}
