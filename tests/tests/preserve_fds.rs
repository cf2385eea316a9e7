//! `--preserve-fds N` with real guests: host pipes, sockets and /dev/null
//! passed as fds 3.. to a container's init and to an exec, carried into
//! the VM (issue 15, group 5); what cannot be carried is refused.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use husk_tests::bundle::TestBundle;
use husk_tests::{output_within, wait_output, Husk, COMMAND_TIMEOUT};

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Makes `cmd` start with `fds` as its fds 3, 4, ... and every other
/// descriptor above 2 closed on exec (a stray inherited one is a leak).
fn with_fds(cmd: &mut Command, fds: &[&dyn AsRawFd]) {
    const MAX: usize = 8;
    assert!(fds.len() <= MAX);
    let mut raw = [-1i32; MAX];
    for (r, f) in raw.iter_mut().zip(fds) {
        *r = f.as_raw_fd();
    }
    let n = fds.len();
    // SAFETY: only fcntl/dup2/close_range between fork and exec, on data
    // prepared before (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            // Above every target first, so no dup2 clobbers a source.
            let mut high = [-1i32; MAX];
            for i in 0..n {
                high[i] = libc::fcntl(raw[i], libc::F_DUPFD_CLOEXEC, 100);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, h) in high.iter().take(n).enumerate() {
                if libc::dup2(*h, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            libc::syscall(
                libc::SYS_close_range,
                3 + n as u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut p = [0; 2];
    // SAFETY: pipe2 fills two fresh descriptors, owned at once.
    unsafe {
        assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC), 0);
        (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1]))
    }
}

/// Everything `fd` yields until EOF, which must come within `t`.
fn read_all_within(fd: OwnedFd, t: Duration) -> Vec<u8> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::fs::File::from(fd).read_to_end(&mut v);
        let _ = tx.send(v);
    });
    rx.recv_timeout(t)
        .unwrap_or_else(|_| panic!("no EOF within {t:?}"))
}

/// Deletes the container (forcibly) when the test ends, however it ends.
struct Delete<'a>(&'a Husk, &'a str);

impl Drop for Delete<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["delete", "--force", self.1]);
    }
}

fn wait_stopped(h: &Husk, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let o = h.run(&["state", id]);
        if o.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            if v["status"] == "stopped" {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{id} never stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pipe to read from, a pipe to write to, a connected socket and
/// /dev/null reach the container's init as fds 3-6; a descriptor that is
/// not passed does not even reach the monitor.
#[test]
fn pipes_socket_and_null_reach_the_init() {
    let h = Husk::new("pfd-pipes");
    let b = TestBundle::busybox(
        "pfd-pipes",
        &[
            "sh",
            "-c",
            // fd 4 closed before the socket part: the host reads it to EOF first.
            "cat <&3 >&4; exec 3<&- 4>&-; read l <&5; echo \"got $l\" >&5; echo gone >&6",
        ],
    );
    let (in_r, mut in_w) = {
        let (r, w) = pipe();
        (r, std::fs::File::from(w))
    };
    let (out_r, out_w) = pipe();
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    let (leak_r, leak_w) = pipe();
    let mut cmd = h.cmd();
    cmd.args([
        "run",
        "--detach",
        "--preserve-fds",
        "4",
        "--bundle",
        b.dir.to_str().unwrap(),
        "pfd-pipes",
    ])
    .stdin(Stdio::null());
    with_fds(&mut cmd, &[&in_r, &out_w, &theirs, &null, &leak_w]);
    let _d = Delete(&h, "pfd-pipes");
    let o = output_within(cmd, COMMAND_TIMEOUT);
    assert!(o.status.success(), "run: {}", err(&o));
    drop((in_r, out_w, theirs, null, leak_w));
    // fd 7 went to `husk run -d`, which has exited; had the monitor (still
    // running: the container waits on fd 3) inherited it, no EOF.
    assert!(read_all_within(leak_r, Duration::from_secs(10)).is_empty());

    in_w.write_all(b"hello through a pipe\n").unwrap();
    drop(in_w);
    let got = read_all_within(out_r, Duration::from_secs(120));
    assert_eq!(String::from_utf8_lossy(&got), "hello through a pipe\n");

    ours.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    ours.write_all(b"ping\n").unwrap();
    let mut reply = String::new();
    ours.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "got ping\n");
    wait_stopped(&h, "pfd-pipes");
}

/// The container side of `listening_sockets_are_activated`: run in the
/// guest (this very test executable, with its libraries copied into the
/// rootfs) as the container's init, it does what a socket-activated
/// server does. Does nothing in a normal test run.
#[test]
fn socket_activated_server() {
    if std::env::var_os("HUSK_PFD_SERVER").is_none() {
        return;
    }
    let n: i32 = std::env::var("LISTEN_FDS").unwrap().parse().unwrap();
    let pid: u32 = std::env::var("LISTEN_PID").unwrap().parse().unwrap();
    assert_eq!(pid, std::process::id(), "LISTEN_PID is not ours");
    for fd in 3..3 + n {
        // SAFETY: getsockopt into an int.
        let listening = unsafe {
            let mut v: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            );
            v == 1
        };
        assert!(listening, "fd {fd} is not a listening socket");
        // SAFETY: an inherited listening socket, ours from here on.
        let l = unsafe { UnixListener::from_raw_fd(fd) };
        // Two connections per socket, both open at once.
        let (mut a, _) = l.accept().unwrap();
        let (mut b, _) = l.accept().unwrap();
        for c in [&mut b, &mut a] {
            let mut line = String::new();
            c.read_to_string(&mut line).unwrap();
            write!(c, "fd {fd}: hello {}", line.trim()).unwrap();
        }
    }
    println!("server done");
}

/// Copies `exe` and the libraries `ldd` names into `rootfs`, at the same paths.
fn copy_with_libraries(exe: &Path, rootfs: &Path, to: &str) {
    std::fs::copy(exe, rootfs.join(to)).unwrap();
    let ldd = Command::new("ldd").arg(exe).output().unwrap();
    assert!(ldd.status.success());
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(Path::new);
        if let Some(p) = path {
            let dest = rootfs.join(p.strip_prefix("/").unwrap());
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(p, &dest).unwrap();
        }
    }
}

/// A listening unix socket and a listening TCP socket (systemd's socket
/// activation, LISTEN_FDS=2): connections to them reach the container,
/// which accepts them from fds 3 and 4, two at a time.
#[test]
fn listening_sockets_are_activated() {
    let h = Husk::new("pfd-listen");
    let mut b = TestBundle::busybox("pfd-listen", &["/pfd-server"]);
    let exe = std::env::current_exe().unwrap();
    copy_with_libraries(&exe, &b.rootfs(), "pfd-server");
    b.config["process"]["args"] = serde_json::json!([
        "/pfd-server",
        "--exact",
        "socket_activated_server",
        "--nocapture",
        "--test-threads=1"
    ]);
    // With a pid namespace the container's process is pid 1, which is what
    // engines put in LISTEN_PID (husk passes the env as it is, as runc).
    let env = b.config["process"]["env"].as_array_mut().unwrap();
    for e in ["LISTEN_FDS=2", "LISTEN_PID=1", "HUSK_PFD_SERVER=1"] {
        env.push(e.into());
    }
    b.write();

    let sock = b.dir.join("activate.sock");
    let unix = UnixListener::bind(&sock).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let mut cmd = h.cmd();
    cmd.args([
        "run",
        "--preserve-fds",
        "2",
        "--bundle",
        b.dir.to_str().unwrap(),
        "pfd-listen",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    with_fds(&mut cmd, &[&unix, &tcp]);
    let child = cmd.spawn().unwrap();
    drop((unix, tcp));

    // Connections queue in the host backlog until the VM is up.
    let t = Some(Duration::from_secs(150));
    let u1 = UnixStream::connect(&sock).unwrap();
    let u2 = UnixStream::connect(&sock).unwrap();
    u1.set_read_timeout(t).unwrap();
    u2.set_read_timeout(t).unwrap();
    let r2 = std::thread::spawn(move || ask(Box::new(u2), "u2"));
    assert_eq!(ask(Box::new(u1), "u1"), "fd 3: hello u1");
    assert_eq!(r2.join().unwrap(), "fd 3: hello u2");
    let t1 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let t2 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    t1.set_read_timeout(t).unwrap();
    t2.set_read_timeout(t).unwrap();
    let r2 = std::thread::spawn(move || ask(Box::new(t2), "t2"));
    assert_eq!(ask(Box::new(t1), "t1"), "fd 4: hello t1");
    assert_eq!(r2.join().unwrap(), "fd 4: hello t2");

    let o = wait_output(child, COMMAND_TIMEOUT);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("server done"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(!h.root.join("pfd-listen").exists());
}

/// Sends `what`, half-closes, and returns the whole answer.
fn ask(mut c: Box<dyn ReadWrite>, what: &str) -> String {
    c.write_all(what.as_bytes()).unwrap();
    c.shutdown_write();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

trait ReadWrite: Read + Write + Send {
    fn shutdown_write(&self);
}
impl ReadWrite for UnixStream {
    fn shutdown_write(&self) {
        self.shutdown(std::net::Shutdown::Write).unwrap();
    }
}
impl ReadWrite for std::net::TcpStream {
    fn shutdown_write(&self) {
        self.shutdown(std::net::Shutdown::Write).unwrap();
    }
}

/// A regular file cannot be carried into the VM: refused with what it is,
/// before anything is created.
#[test]
fn a_regular_file_is_refused() {
    let h = Husk::new("pfd-file");
    let b = TestBundle::busybox("pfd-file", &["true"]);
    let file = std::fs::File::open(b.dir.join("config.json")).unwrap();
    let (r, _w) = pipe();
    let mut cmd = h.cmd();
    cmd.args([
        "run",
        "--preserve-fds",
        "2",
        "--bundle",
        b.dir.to_str().unwrap(),
        "pfd-file",
    ])
    .stdin(Stdio::null());
    with_fds(&mut cmd, &[&r, &file]);
    let o = output_within(cmd, COMMAND_TIMEOUT);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert_eq!(
        err(&o),
        "husk: --preserve-fds: fd 4 is a regular file; only pipes, FIFOs, stream sockets \
         (listening or connected) and /dev/null can be passed into the VM\n"
    );
    assert!(!h.root.join("pfd-file").exists());
    if let Ok(entries) = std::fs::read_dir(&h.root) {
        assert_eq!(entries.count(), 0, "left behind in {}", h.root.display());
    }
}

/// `husk exec --preserve-fds`: the exec'd process gets the host pipes; the
/// exec client relays them while it runs.
#[test]
fn exec_gets_pipes() {
    let h = Husk::new("pfd-exec");
    let b = TestBundle::busybox("pfd-exec", &["sleep", "1000"]);
    let o = h.run(&[
        "run",
        "--detach",
        "--bundle",
        b.dir.to_str().unwrap(),
        "pfd-exec",
    ]);
    let _d = Delete(&h, "pfd-exec");
    assert!(o.status.success(), "run -d: {}", err(&o));

    let (in_r, in_w) = pipe();
    std::fs::File::from(in_w)
        .write_all(b"into the exec\n")
        .unwrap();
    let (out_r, out_w) = pipe();
    let mut cmd = h.cmd();
    cmd.args([
        "exec",
        "--preserve-fds",
        "2",
        "pfd-exec",
        "sh",
        "-c",
        "cat <&4 >&3; test -e /proc/$$/fd/5 && echo leaked || echo clean",
    ])
    .stdin(Stdio::null());
    with_fds(&mut cmd, &[&out_w, &in_r]);
    let o = output_within(cmd, COMMAND_TIMEOUT);
    drop((in_r, out_w));
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    // Nothing of the agent's beyond fds 3 and 4.
    assert_eq!(String::from_utf8_lossy(&o.stdout), "clean\n");
    let got = read_all_within(out_r, Duration::from_secs(30));
    assert_eq!(String::from_utf8_lossy(&got), "into the exec\n");
}
