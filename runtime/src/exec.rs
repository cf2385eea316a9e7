//! Extra processes in a running container (`husk exec`).
//!
//! Like the container's init, an exec'd process has a host process standing
//! for it: `husk exec` itself in the foreground, or a detached exec monitor
//! (`husk exec --detach`, whose pid goes to `--pid-file` for conmon). It
//! relays stdio (pipes, a `--console-socket` pty, or our own terminal)
//! and the descriptors passed with `--preserve-fds` (`passfd`), forwards
//! signals and window-size changes, and ends the way the guest
//! process ended.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use husk_protocol::{ExecProcess, ExitStatus, PassedFd, Request, Response, StdioStream};
use oci_spec::runtime::Process;
use serde::{Deserialize, Serialize};

use crate::container::Store;
use crate::monitor;
use crate::stdio::{self, RawMode};
use crate::vm::AgentClient;

const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything an exec needs; a detached exec monitor reads it from a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    pub id: String,
    pub exec_id: String,
    pub process: Process,
    pub terminal: bool,
    /// Where the pty master goes (terminal only); without it a terminal exec
    /// uses our own stdin/stdout as the terminal.
    pub console_socket: Option<PathBuf>,
    /// `--preserve-fds`: what our fds 3, 4, ... are, in order (`passfd`).
    #[serde(default)]
    pub passed_fds: Vec<PassedFd>,
}

/// Where a detached exec's request is kept until its monitor has read it.
pub fn request_path(state_dir: &Path, exec_id: &str) -> PathBuf {
    state_dir.join(format!("exec-{exec_id}.json"))
}

/// A started exec process.
pub struct Session {
    uds: PathBuf,
    id: String,
    exec_id: String,
    exited: mpsc::Receiver<Result<ExitStatus, String>>,
    outputs: Vec<std::thread::JoinHandle<()>>,
    _raw: Option<RawMode>,
}

enum TermHost {
    /// No terminal: our fds 0, 1, 2 are relayed.
    Pipes,
    /// The slave of a pty whose master went to the console socket.
    Console(File),
    /// Our own terminal.
    Own,
}

/// Creates the process in the guest, attaches its stdio, and starts it.
/// Signals must already be blocked ([`monitor::block_signals`]).
pub fn start(store: &Store, req: &ExecRequest, ctty: bool) -> Result<Session, String> {
    // Our fds 3, 4, ... (checked by the caller) are the process's.
    let passed = crate::passfd::adopt(req.passed_fds.len());
    let uds = monitor::vsock_path(&store.dir(&req.id).map_err(|e| e.to_string())?);
    let connect = || AgentClient::connect(&uds, AGENT_TIMEOUT).map_err(|e| e.to_string());
    let exec = Box::new(ExecProcess {
        id: req.id.clone(),
        exec_id: req.exec_id.clone(),
        process: req.process.clone(),
        terminal: req.terminal,
    });
    connect()?
        .expect_ok(&if req.passed_fds.is_empty() {
            Request::ExecProcess(exec)
        } else {
            Request::ExecProcessWithFds {
                exec,
                fds: req.passed_fds.clone(),
            }
        })
        .map_err(|e| e.to_string())?;
    // From here on a failure must not leave the prepared process behind.
    match attach_and_start(&uds, req, ctty, passed) {
        Ok(s) => Ok(s),
        Err(e) => {
            if let Ok(mut a) = connect() {
                let _ = a.request(&Request::Signal {
                    id: req.id.clone(),
                    exec_id: Some(req.exec_id.clone()),
                    signal: libc::SIGKILL,
                    all: false,
                });
                let _ = a.request(&Request::DeleteProcess {
                    id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                });
            }
            Err(e)
        }
    }
}

fn attach_and_start(
    uds: &Path,
    req: &ExecRequest,
    ctty: bool,
    passed: Vec<OwnedFd>,
) -> Result<Session, String> {
    let connect = || AgentClient::connect(uds, AGENT_TIMEOUT).map_err(|e| e.to_string());
    let attach = |stream: StdioStream| -> Result<UnixStream, String> {
        let mut c = connect()?;
        c.expect_ok(&Request::AttachStdio {
            id: req.id.clone(),
            exec_id: Some(req.exec_id.clone()),
            stream,
        })
        .map_err(|e| e.to_string())?;
        let s = c.into_stream();
        s.set_read_timeout(None).map_err(|e| e.to_string())?;
        Ok(s)
    };
    let host = match (&req.console_socket, req.terminal) {
        (_, false) => TermHost::Pipes,
        (Some(sock), true) => TermHost::Console(stdio::console_pty(sock, ctty)?),
        (None, true) => TermHost::Own,
    };
    let mut outputs = Vec::new();
    let mut raw = None;
    let size_fd: Option<File> = match &host {
        TermHost::Pipes => {
            let stdin = attach(StdioStream::Stdin)?;
            let stdout = attach(StdioStream::Stdout)?;
            let stderr = attach(StdioStream::Stderr)?;
            stdio::spawn_copy(stdio::dup_std(0)?, stdin, true);
            outputs.push(stdio::spawn_copy(stdout, stdio::dup_std(1)?, false));
            outputs.push(stdio::spawn_copy(stderr, stdio::dup_std(2)?, false));
            None
        }
        TermHost::Console(slave) => {
            let conn = attach(StdioStream::Terminal)?;
            let conn_in = conn.try_clone().map_err(|e| e.to_string())?;
            let slave_in = slave.try_clone().map_err(|e| e.to_string())?;
            let slave_out = slave.try_clone().map_err(|e| e.to_string())?;
            stdio::spawn_copy(slave_in, conn_in, true);
            outputs.push(stdio::spawn_copy(conn, slave_out, false));
            Some(slave.try_clone().map_err(|e| e.to_string())?)
        }
        TermHost::Own => {
            let conn = attach(StdioStream::Terminal)?;
            let conn_in = conn.try_clone().map_err(|e| e.to_string())?;
            raw = RawMode::stdin();
            stdio::spawn_copy(stdio::dup_std(0)?, conn_in, true);
            outputs.push(stdio::spawn_copy(conn, stdio::dup_std(1)?, false));
            Some(stdio::dup_std(0)?)
        }
    };
    outputs.extend(crate::passfd::relay(
        uds,
        &req.id,
        Some(&req.exec_id),
        &req.passed_fds,
        passed,
    )?);

    let (tx, exited) = mpsc::channel();
    let mut wait_conn = connect()?;
    let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
    std::thread::spawn(move || {
        // Waits as long as the process runs; nothing else waits on this thread.
        wait_conn.set_timeout(None);
        let ev = match wait_conn.request(&Request::WaitProcess {
            id,
            exec_id: Some(exec_id),
        }) {
            Ok(Response::Exited { status }) => Ok(status),
            Ok(other) => Err(crate::vm::unexpected("wait reply", &other).to_string()),
            Err(e) => Err(e.to_string()),
        };
        let _ = tx.send(ev);
    });

    let mut ctl = connect()?;
    if let Some((rows, cols)) = size_fd.as_ref().and_then(|f| stdio::window_size(f.as_fd())) {
        let _ = ctl.request(&Request::ResizeTerminal {
            id: req.id.clone(),
            exec_id: Some(req.exec_id.clone()),
            rows,
            cols,
        });
    }
    ctl.expect_ok(&Request::StartProcess {
        id: req.id.clone(),
        exec_id: req.exec_id.clone(),
    })
    .map_err(|e| e.to_string())?;
    monitor::forward_signals(
        uds.to_path_buf(),
        req.id.clone(),
        Some(req.exec_id.clone()),
        size_fd,
    );
    Ok(Session {
        uds: uds.to_path_buf(),
        id: req.id.clone(),
        exec_id: req.exec_id.clone(),
        exited,
        outputs,
        _raw: raw,
    })
}

impl Session {
    /// Waits for the process to exit (a lost VM counts as death by SIGKILL),
    /// drains its output and forgets it in the guest.
    pub fn wait(self) -> ExitStatus {
        let status = match self.exited.recv() {
            Ok(Ok(s)) => s,
            Ok(Err(why)) => {
                eprintln!("husk: exec {}: lost the VM: {why}", self.exec_id);
                ExitStatus::Signal(libc::SIGKILL)
            }
            Err(_) => ExitStatus::Signal(libc::SIGKILL),
        };
        stdio::join_within(self.outputs, Duration::from_secs(5));
        if let Ok(mut a) = AgentClient::connect(&self.uds, Duration::from_secs(5)) {
            let _ = a.request(&Request::DeleteProcess {
                id: self.id.clone(),
                exec_id: self.exec_id.clone(),
            });
        }
        drop(self._raw);
        status
    }
}

/// Entry point of the detached exec monitor (`husk __exec-monitor`). Never returns.
pub fn run_monitor(store: &Store, id: &str, exec_id: &str, sync: OwnedFd) -> ! {
    monitor::block_signals();
    let mut sync = File::from(sync);
    let req: Result<ExecRequest, String> =
        store.dir(id).map_err(|e| e.to_string()).and_then(|dir| {
            let path = request_path(&dir, exec_id);
            let b = std::fs::read(&path).map_err(|e| e.to_string());
            let _ = std::fs::remove_file(&path);
            serde_json::from_slice(&b?).map_err(|e| e.to_string())
        });
    // Our own session, so a console pty can become our controlling terminal.
    let ctty = nix::unistd::setsid().is_ok();
    let mut console = false;
    let session = match req.and_then(|req| {
        console = req.terminal && req.console_socket.is_some();
        start(store, &req, ctty)
    }) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(sync, "error: {e}");
            std::process::exit(1);
        }
    };
    let _ = writeln!(sync, "ok");
    drop(sync);
    if console {
        // As the container's monitor: the caller's pipes are not ours to keep.
        crate::stdio::detach_std();
    }
    monitor::die_like(session.wait())
}
