//! husk-agent: PID 1 of every husk guest.
//!
//! It sets up the guest's base filesystems, reaps orphans, listens on vsock
//! port [`AGENT_PORT`] for host requests and, when the kernel command line names
//! a notify port, connects to the host to announce it is ready. It must never
//! panic: PID 1 exiting panics the guest kernel.

mod init;
mod server;
mod sysinfo;

use std::process::ExitCode;

fn main() -> ExitCode {
    let started = sysinfo::boottime_us();
    let pid1 = std::process::id() == 1;
    if pid1 {
        init::setup();
    }
    // Blocked before any thread starts so every thread inherits the mask and
    // SIGCHLD is only ever taken by the reaper's sigwait.
    if let Err(e) = init::block_sigchld() {
        eprintln!("husk-agent: cannot block SIGCHLD: {e}");
    }
    if pid1 {
        init::spawn_reaper();
    }
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
