//! The vsock server: one thread per host connection.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use husk_protocol::{self as proto, FrameError, HelloInfo, Request, Response};
use nix::sys::socket::{
    accept4, bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

use crate::container;
use crate::network;
use crate::sysinfo;

/// How the agent runs: as the VM's PID 1 on vsock, or (tests) on a unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Vm,
    Unix,
}

fn hello_info(started_us: u64, listening_us: u64) -> HelloInfo {
    HelloInfo {
        protocol_version: proto::PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_version: sysinfo::kernel_release(),
        boot_to_listen_us: listening_us,
        boot_to_init_us: started_us,
        online_cpus: sysinfo::online_cpus(),
        memory_total_kib: sysinfo::memory_total_kib(),
    }
}

/// Test mode: serve on a unix socket at `path` (no base mounts, Shutdown
/// just exits).
pub fn run_unix(path: &str, started_us: u64) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    let hello = hello_info(started_us, sysinfo::boottime_us());
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let hello = hello.clone();
                let spawned = std::thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || serve(stream, hello, Mode::Unix));
                if let Err(e) = spawned {
                    eprintln!("husk-agent: cannot start connection thread: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("husk-agent: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

const VMADDR_CID_ANY: u32 = u32::MAX;
const VMADDR_CID_HOST: u32 = 2;

pub fn run(started_us: u64) -> io::Result<()> {
    let listener = vsock_socket()?;
    bind(
        listener.as_raw_fd(),
        &VsockAddr::new(VMADDR_CID_ANY, proto::AGENT_PORT),
    )?;
    listen(&listener, Backlog::new(16).unwrap_or(Backlog::MAXCONN))?;
    let listening_us = sysinfo::boottime_us();
    println!(
        "husk-agent {} listening on vsock port {} at +{} ms",
        env!("CARGO_PKG_VERSION"),
        proto::AGENT_PORT,
        listening_us / 1000
    );
    let hello = hello_info(started_us, listening_us);
    if let Some(port) = sysinfo::cmdline_param(proto::NOTIFY_PORT_PARAM) {
        notify_host(&port, &hello);
    }
    // Boot profiling: with `quiet initcall_debug husk.dump_kmsg=1` the kernel
    // log is written to the console once, after boot, instead of byte by byte
    // while it boots (which would distort the timings it records).
    if sysinfo::cmdline_param("husk.dump_kmsg").as_deref() == Some("1") {
        sysinfo::dump_kmsg();
    }
    loop {
        // CLOEXEC: connections must not leak into container processes.
        let fd = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("husk-agent: accept: {e}");
                continue;
            }
        };
        // SAFETY: accept returned a fresh descriptor we now own.
        let stream = UnixStreamLike::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let hello = hello.clone();
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || serve(stream, hello, Mode::Vm));
        if let Err(e) = spawned {
            eprintln!("husk-agent: cannot start connection thread: {e}");
        }
    }
}

/// A connected vsock stream. `UnixStream` is used only as a std `Read + Write`
/// wrapper around a stream socket descriptor; nothing unix-specific is called.
type UnixStreamLike = UnixStream;

fn vsock_socket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// Tells the host the agent is up by connecting to its notify port and sending
/// the hello unprompted. Failure is only logged: the host can still poll.
fn notify_host(port: &str, hello: &HelloInfo) {
    let Ok(port) = port.parse::<u32>() else {
        eprintln!("husk-agent: bad {}={port}", proto::NOTIFY_PORT_PARAM);
        return;
    };
    let result = vsock_socket().and_then(|fd| {
        connect(fd.as_raw_fd(), &VsockAddr::new(VMADDR_CID_HOST, port))?;
        let mut s = UnixStreamLike::from(fd);
        proto::send(&mut s, &Response::Hello(hello.clone())).map_err(io::Error::other)
    });
    if let Err(e) = result {
        eprintln!("husk-agent: notify host port {port}: {e}");
    }
}

fn serve(mut stream: UnixStreamLike, hello: HelloInfo, mode: Mode) {
    let reg = container::registry();
    let mut greeted = false;
    loop {
        let req: Request = match proto::recv(&mut stream) {
            Ok(r) => r,
            Err(FrameError::Closed) => return,
            Err(e @ (FrameError::Malformed(_) | FrameError::TooLarge(_))) => {
                let _ = proto::send(
                    &mut stream,
                    &Response::Error {
                        message: e.to_string(),
                    },
                );
                return;
            }
            Err(_) => return,
        };
        let reply = match req {
            Request::Hello { protocol_version } if protocol_version == proto::PROTOCOL_VERSION => {
                greeted = true;
                Response::Hello(hello.clone())
            }
            Request::Hello { protocol_version } => Response::Error {
                message: format!(
                    "protocol version {protocol_version} not supported (agent speaks {})",
                    proto::PROTOCOL_VERSION
                ),
            },
            _ if !greeted => Response::Error {
                message: "hello required first".into(),
            },
            Request::Ping { seq } => Response::Pong { seq },
            Request::Shutdown => {
                reg.kill_everything();
                let _ = proto::send(&mut stream, &Response::ShuttingDown);
                await_host_close(&mut stream);
                match mode {
                    Mode::Vm => shutdown_vm(),
                    Mode::Unix => std::process::exit(0),
                }
            }
            Request::CreateContainer(req) => reg.create(&req, &[]),
            Request::CreateContainerWithFds { create, fds } => reg.create(&create, &fds),
            Request::StartContainer { id } => reg.start(&id),
            Request::Signal {
                id,
                exec_id,
                signal,
                all,
            } => reg.signal(&id, &exec_id, signal, all),
            Request::WaitProcess { id, exec_id } => reg.wait(&id, &exec_id),
            Request::ContainerState { id } => reg.state(&id),
            Request::DeleteContainer { id, force } => reg.delete(&id, force),
            Request::AttachStdio {
                id,
                exec_id,
                stream: which,
            } => match reg.attach(&id, &exec_id, which) {
                Ok(attachment) => {
                    if proto::send(&mut stream, &Response::Ok).is_ok() {
                        attachment.relay(stream);
                    }
                    return;
                }
                Err(reply) => reply,
            },
            Request::ExecProcess(req) => reg.exec(&req, &[]),
            Request::ExecProcessWithFds { exec, fds } => reg.exec(&exec, &fds),
            Request::AttachFd { id, exec_id, fd } => match reg.attach_fd(&id, &exec_id, fd) {
                Ok(attachment) => {
                    if proto::send(&mut stream, &Response::Ok).is_ok() {
                        attachment.relay(stream);
                    }
                    return;
                }
                Err(reply) => reply,
            },
            Request::StartProcess { id, exec_id } => reg.start_process(&id, &exec_id),
            Request::DeleteProcess { id, exec_id } => reg.delete_process(&id, &exec_id),
            Request::ResizeTerminal {
                id,
                exec_id,
                rows,
                cols,
            } => reg.resize(&id, &exec_id, rows, cols),
            Request::PauseContainer { id } => reg.pause(&id),
            Request::ResumeContainer { id } => reg.resume(&id),
            Request::UpdateContainer { id, resources } => reg.update(&id, &resources),
            Request::ContainerStats { id } => reg.stats(&id),
            Request::ListProcesses { id } => reg.processes(&id),
            // The test mode runs on an ordinary host: never reconfigure the host's network, nor
            // move a host NIC into a container.
            Request::ConfigureNetwork(_) | Request::ConfigureContainerNetwork { .. }
                if mode == Mode::Unix && !network::in_own_netns() =>
            {
                Response::Error {
                    message: "--listen-unix: ConfigureNetwork and ConfigureContainerNetwork are served only in a network namespace other than init's (start the agent under unshare -n)".into(),
                }
            }
            Request::ConfigureNetwork(cfg) => network::configure_guest(&cfg),
            Request::ConfigureContainerNetwork { id, network } => {
                reg.configure_network(&id, &network)
            }
        };
        if proto::send(&mut stream, &reply).is_err() {
            return;
        }
    }
}

/// The reset would drop the reply still queued in the guest's vsock stack, so
/// wait (briefly) until the host has read it and hung up.
fn await_host_close(stream: &mut UnixStreamLike) {
    use std::io::Read;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let mut buf = [0u8; 64];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// Syncs and resets the VM. With `reboot=k` the kernel resets through the
/// keyboard controller, which the VMM turns into its own clean exit.
fn shutdown_vm() -> ! {
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    eprintln!("husk-agent: reboot: {err:?}");
    loop {
        std::thread::park();
    }
}
