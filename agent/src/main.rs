//! husk-agent: PID 1 of every husk guest.
//!
//! It sets up the guest's base filesystems, reaps orphans, listens on vsock
//! port [`AGENT_PORT`] for host requests and, when the kernel command line names
//! a notify port, connects to the host to announce it is ready. It must never
//! panic: PID 1 exiting panics the guest kernel.
//!
//! Hidden modes:
//! - `husk-agent container-init`: the agent re-executed as a container's init
//!   (see `container::init`); never started by hand.
//! - `husk-agent container-exec`: the same for an exec process joining a
//!   running container (see `container::exec_init`).
//! - `husk-agent --listen-unix PATH`: serve the protocol on a unix socket, for
//!   tests on an ordinary (root) host: own mount namespace, no base mounts,
//!   child subreaper instead of PID 1, and `Shutdown` just exits.
//!
//! [`AGENT_PORT`]: husk_protocol::AGENT_PORT

mod container;
mod init;
mod network;
mod server;
mod sysinfo;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some(container::INIT_ARG) => container::init::main(),
        Some(container::EXEC_ARG) => container::exec_init::main(),
        _ => {}
    }
    let started = sysinfo::boottime_us();
    let unix_path = match args.get(1).map(String::as_str) {
        Some("--listen-unix") => match args.get(2) {
            Some(p) => Some(p.clone()),
            None => {
                eprintln!("husk-agent: --listen-unix needs a socket path");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let pid1 = std::process::id() == 1;
    if let Some(path) = unix_path {
        // Before any thread exists: unshare(CLONE_NEWNS) applies to the
        // calling thread only.
        if let Err(e) = init::setup_test_host() {
            eprintln!("husk-agent: {e}");
            return ExitCode::FAILURE;
        }
        if let Err(e) = init::block_sigchld() {
            eprintln!("husk-agent: cannot block SIGCHLD: {e}");
        }
        init::spawn_reaper();
        return match server::run_unix(&path, started) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("husk-agent: {path}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if pid1 {
        init::setup();
    }
    // Blocked before any thread starts so every thread inherits the mask and
    // SIGCHLD is only ever taken by the reaper's sigwait.
    if let Err(e) = init::block_sigchld() {
        eprintln!("husk-agent: cannot block SIGCHLD: {e}");
    }
    if !pid1 {
        // Container processes re-parent to us rather than to the real init.
        // SAFETY: plain prctl.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    init::spawn_reaper();
    match server::run(started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk-agent: {e}");
            if pid1 {
                // Returning would panic the kernel; park so the host sees a
                // dead agent rather than a crashed VM and can tear it down.
                loop {
                    std::thread::park();
                }
            }
            ExitCode::FAILURE
        }
    }
}
