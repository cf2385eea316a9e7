//! Boots the real guest image with the real husk-vmm and talks to the agent.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use husk::vm::{vsock_connect, Vm};
use husk_protocol::{self as proto, Request, Response};
use husk_tests::{spec, vm_dir};

const T: Duration = Duration::from_secs(60);

#[test]
fn boot_hello_ping_shutdown() {
    let dir = vm_dir("hello");
    let mut vm = Vm::launch(&spec(), &dir).expect("launch");
    println!(
        "launch->hello {:?}; guest clock at listen {} us; kernel {}",
        vm.launch_to_hello, vm.hello.boot_to_listen_us, vm.hello.kernel_version
    );
    assert_eq!(vm.hello.protocol_version, proto::PROTOCOL_VERSION);
    assert!(
        vm.hello.kernel_version.starts_with("6.1."),
        "{:?}",
        vm.hello
    );
    assert_eq!(vm.hello.online_cpus, 1);
    assert!(vm.hello.boot_to_listen_us >= vm.hello.boot_to_init_us);
    assert!(vm.hello.boot_to_init_us > 0);
    // ~128 MiB minus what the kernel keeps.
    assert!((64 * 1024..=128 * 1024).contains(&vm.hello.memory_total_kib));

    // Host-initiated connection through CONNECT, hello again on it.
    let mut agent = vm.agent().expect("agent");
    assert_eq!(agent.hello.agent_version, vm.hello.agent_version);
    for seq in 0..100 {
        agent.ping(seq).expect("ping");
    }
    agent.shutdown().expect("shutdown");
    let status = vm.wait(T).expect("vmm exit");
    assert_eq!(status.code(), Some(0), "{}", vm.stderr_tail());
    assert!(!vm.vsock_path().exists(), "VMM removes its vsock socket");
}

#[test]
fn two_vcpus_are_online() {
    let mut s = spec();
    s.vcpus = 2;
    let mut vm = Vm::launch(&s, &vm_dir("smp")).expect("launch");
    assert_eq!(vm.hello.online_cpus, 2);
    let status = vm.shutdown(T).expect("shutdown");
    assert_eq!(status.code(), Some(0), "{}", vm.stderr_tail());
}

#[test]
fn guest_initiated_connection_reaches_host_socket() {
    // Launch husk-vmm by hand: the agent connects to host port 1030, which
    // the VMM must deliver to `<uds>_1030`.
    let s = spec();
    let dir = vm_dir("g2h");
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    let listener = UnixListener::bind(format!("{}_1030", uds.display())).unwrap();
    let mut child = Command::new(&s.vmm)
        .args(["--kernel", s.kernel.to_str().unwrap()])
        .args(["--initrd", s.initrd.to_str().unwrap()])
        .args(["--vsock-uds", uds.to_str().unwrap()])
        .args(["--cmdline-extra", "husk.notify_port=1030"])
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut conn = accept_within(&listener, T, &mut child);
    conn.set_read_timeout(Some(T)).unwrap();
    match proto::recv::<Response>(&mut conn).unwrap() {
        Response::Hello(h) => assert_eq!(h.protocol_version, proto::PROTOCOL_VERSION),
        other => panic!("unexpected {other:?}"),
    }
    // EOF from the guest side once the agent closes its end.
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let mut agent = husk::vm::AgentClient::connect(&uds, T).unwrap();
    agent.ping(1).unwrap();
    agent.shutdown().unwrap();
    assert_eq!(wait_within(&mut child, T), Some(0));
}

/// Accepts one connection, failing (not hanging) if the VMM dies or time runs out.
fn accept_within(l: &UnixListener, t: Duration, child: &mut std::process::Child) -> UnixStream {
    l.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + t;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("husk-vmm exited ({st}) before the guest connected");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("no guest connection within {t:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_within(child: &mut std::process::Child, t: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + t;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("husk-vmm still running after {t:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn refused_and_garbage_connections_leave_vm_working() {
    let mut vm = Vm::launch(&spec(), &vm_dir("bad")).expect("launch");
    // Nobody listens on guest port 4000: the VMM closes our side.
    let err = vsock_connect(vm.vsock_path(), 4000, T).unwrap_err();
    assert!(err.to_string().contains("connection refused"), "{err}");
    // Garbage instead of CONNECT: closed, nothing else happens.
    for junk in [
        &b"HELLO\n"[..],
        b"CONNECT\n",
        b"CONNECT -1\n",
        b"CONNECT 99999999999\n",
        &[b'x'; 200],
    ] {
        let mut s = UnixStream::connect(vm.vsock_path()).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let _ = s.write_all(junk);
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "{junk:?} must be refused");
    }
    // Garbage frames to the agent: it answers with an error and hangs up.
    let mut s = vsock_connect(vm.vsock_path(), proto::AGENT_PORT, T).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(&[0, 0, 0, 5, b'{', b'x', 0xff, b'"', b'!'])
        .unwrap();
    match proto::recv::<Response>(&mut s) {
        Ok(Response::Error { .. }) => {}
        other => panic!("expected an error reply, got {other:?}"),
    }
    // Requests before hello are refused.
    let mut s = vsock_connect(vm.vsock_path(), proto::AGENT_PORT, T).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    proto::send(&mut s, &Request::Ping { seq: 1 }).unwrap();
    assert!(matches!(
        proto::recv::<Response>(&mut s),
        Ok(Response::Error { .. })
    ));
    // An oversized frame header is refused without the agent allocating it.
    let mut s = vsock_connect(vm.vsock_path(), proto::AGENT_PORT, T).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert!(matches!(
        proto::recv::<Response>(&mut s),
        Ok(Response::Error { .. })
    ));
    // Still fine.
    let mut agent = vm.agent().unwrap();
    agent.ping(7).unwrap();
    agent.shutdown().unwrap();
    assert_eq!(vm.wait(T).unwrap().code(), Some(0), "{}", vm.stderr_tail());
}

#[test]
fn bulk_data_both_ways_with_flow_control() {
    // 4 MiB of pings in flight at once exercise credit updates in both directions.
    let vm = Vm::launch(&spec(), &vm_dir("bulk")).expect("launch");
    let mut agent = vm.agent().unwrap();
    let n = 2000u64;
    let s = agent.stream();
    let mut out = Vec::new();
    for seq in 0..n {
        proto::send(&mut out, &Request::Ping { seq }).unwrap();
    }
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&out).unwrap());
    for seq in 0..n {
        match proto::recv::<Response>(s).unwrap() {
            Response::Pong { seq: got } => assert_eq!(got, seq),
            other => panic!("{other:?}"),
        }
    }
    writer.join().unwrap();
}

#[test]
fn guest_panic_is_reported_as_crash() {
    // No init in the initramfs under that name: the kernel panics, and with
    // panic=1 resets the VM. husk-vmm must not call that a clean shutdown.
    let s = spec();
    let dir = vm_dir("panic");
    std::fs::create_dir_all(&dir).unwrap();
    let err_path = dir.join("stderr");
    let mut child = Command::new(&s.vmm)
        .args(["--kernel", s.kernel.to_str().unwrap()])
        .args(["--initrd", s.initrd.to_str().unwrap()])
        .args(["--cmdline-extra", "rdinit=/no-such-init init=/no-such-init"])
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let code = wait_within(&mut child, T);
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("guest crashed"), "{stderr}");
}

#[test]
fn console_shows_agent_and_reboot() {
    let mut s = spec();
    let dir = vm_dir("console");
    std::fs::create_dir_all(&dir).unwrap();
    let console = dir.join("console.log");
    s.console = Some(console.clone());
    let mut vm = Vm::launch(&s, &dir).expect("launch");
    vm.shutdown(T).unwrap();
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(
        text.contains("husk-agent 0.1.0 listening on vsock port 1024"),
        "console: {text}"
    );
    // The kernel's own last words of an orderly reboot.
    assert!(
        text.contains("reboot: Restarting system"),
        "console: {text}"
    );
}
