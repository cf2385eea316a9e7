//! `husk exec`, with runc's flags.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{anyhow, bail, Context};
use husk::container::{Status, Store};
use husk::exec::{self, ExecRequest};
use husk::monitor;
use oci_spec::runtime::{Capability, Process};

#[derive(clap::Args)]
pub struct ExecArgs {
    /// Unix socket to send the pty master to (with --tty).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Working directory in the container.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Set an environment variable (NAME=VALUE); repeatable.
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Allocate a pseudo-TTY.
    #[arg(short, long)]
    pub tty: bool,
    /// UID[:GID] to run as.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional group ids; repeatable.
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// A JSON file with the whole OCI process (the other process flags are then ignored).
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Return once the process started; its pid (in --pid-file) stands for it.
    #[arg(short, long)]
    pub detach: bool,
    /// Write the pid of the process standing for the exec to this file.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Accepted for compatibility (no SELinux/AppArmor in the guest).
    #[arg(long)]
    pub process_label: Option<String>,
    #[arg(long)]
    pub apparmor: Option<String>,
    /// Set no_new_privileges for the process.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Add a capability (bounding, effective, permitted); repeatable.
    #[arg(short, long)]
    pub cap: Vec<String>,
    /// Accepted; extra descriptors are not passed into the VM.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Accepted: the process joins the container's cgroup in the guest.
    #[arg(long)]
    pub cgroup: Vec<String>,
    /// Exec even if the container is paused.
    #[arg(long)]
    pub ignore_paused: bool,
    pub id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub fn exec(store: &Store, root: &Path, a: &ExecArgs) -> anyhow::Result<ExitCode> {
    let st = store.load(&a.id)?;
    match st.status() {
        Status::Stopped => bail!("cannot exec in a stopped container"),
        Status::Paused if !a.ignore_paused => bail!("cannot exec in a paused container"),
        _ => {}
    }
    let dir = store.dir(&a.id);
    let process = match &a.process {
        Some(p) => read_process(p)?,
        None => process_from_flags(&dir, a)?,
    };
    validate(&process)?;
    let terminal = process.terminal().unwrap_or(false);
    if terminal && a.detach && a.console_socket.is_none() {
        bail!("cannot allocate tty if husk will detach without setting console socket");
    }
    if !terminal && a.console_socket.is_some() {
        bail!("cannot use console socket if husk will not allocate tty");
    }
    let req = ExecRequest {
        id: a.id.clone(),
        exec_id: new_exec_id()?,
        process,
        terminal,
        console_socket: a
            .console_socket
            .as_ref()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
    };
    if a.detach {
        let pid = spawn_monitor(root, &dir, &req)?;
        if let Some(p) = &a.pid_file {
            super::lifecycle::write_pid_file(p, pid)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    exec::block_signals();
    let session = exec::start(store, &req, false).map_err(|e| anyhow!(e))?;
    if let Some(p) = &a.pid_file {
        super::lifecycle::write_pid_file(p, std::process::id())?;
    }
    monitor::die_like(session.wait())
}

/// Starts the detached exec monitor and waits for its verdict; returns its pid.
fn spawn_monitor(root: &Path, dir: &Path, req: &ExecRequest) -> anyhow::Result<u32> {
    let path = exec::request_path(dir, &req.exec_id);
    std::fs::write(&path, serde_json::to_vec(req)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let (rd, wr) = nix::unistd::pipe()?;
    nix::fcntl::fcntl(
        rd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    let child = Command::new(std::env::current_exe()?)
        .arg("--root")
        .arg(root)
        .arg("__exec-monitor")
        .arg(&req.id)
        .arg(&req.exec_id)
        .env("HUSK_SYNC_FD", wr.as_raw_fd().to_string())
        .spawn()
        .context("cannot start the exec monitor");
    drop(wr);
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    if let Err(e) = monitor::read_sync(rd) {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&path);
        bail!("{e}");
    }
    Ok(child.id())
}

fn read_process(path: &Path) -> anyhow::Result<Process> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .with_context(|| format!("cannot read process file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("invalid process file {}", path.display()))
}

/// runc's defaults: the container's own process, with the flags on top.
fn process_from_flags(dir: &Path, a: &ExecArgs) -> anyhow::Result<Process> {
    if a.command.is_empty() {
        bail!("exec args cannot be empty");
    }
    let created = monitor::load_create_request(dir).map_err(|e| anyhow!(e))?;
    let mut p = created.spec.process().clone().unwrap_or_default();
    p.set_args(Some(a.command.clone()));
    p.set_terminal(Some(a.tty));
    p.set_console_size(None);
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.into());
    }
    if !a.env.is_empty() {
        let mut env = p.env().clone().unwrap_or_default();
        for e in &a.env {
            // A later NAME=... replaces an earlier one, as in runc.
            let name = e.split('=').next().unwrap_or("");
            env.retain(|old| old.split('=').next() != Some(name));
            env.push(e.clone());
        }
        p.set_env(Some(env));
    }
    if let Some(u) = &a.user {
        let mut user = p.user().clone();
        let (uid, gid) = match u.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (u.as_str(), None),
        };
        user.set_uid(
            uid.parse()
                .map_err(|_| anyhow!("invalid user {u:?}: want UID[:GID]"))?,
        );
        user.set_gid(match gid {
            Some(g) => g
                .parse()
                .map_err(|_| anyhow!("invalid user {u:?}: want UID[:GID]"))?,
            None => 0,
        });
        user.set_username(None);
        p.set_user(user);
    }
    if !a.additional_gids.is_empty() {
        let mut user = p.user().clone();
        user.set_additional_gids(Some(a.additional_gids.clone()));
        p.set_user(user);
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if !a.cap.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for c in &a.cap {
            let name = c.to_ascii_uppercase();
            let name = if name.starts_with("CAP_") {
                name
            } else {
                format!("CAP_{name}")
            };
            let cap: Capability = name
                .parse()
                .map_err(|_| anyhow!("unknown capability {c:?}"))?;
            let add = |set: &Option<oci_spec::runtime::Capabilities>| {
                let mut set = set.clone().unwrap_or_default();
                set.insert(cap);
                Some(set)
            };
            let (b, e, pm) = (
                add(caps.bounding()),
                add(caps.effective()),
                add(caps.permitted()),
            );
            caps.set_bounding(b);
            caps.set_effective(e);
            caps.set_permitted(pm);
        }
        p.set_capabilities(Some(caps));
    }
    Ok(p)
}

fn validate(p: &Process) -> anyhow::Result<()> {
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        bail!("args must not be empty");
    }
    if !p.cwd().is_absolute() {
        bail!("cwd property must be an absolute path");
    }
    Ok(())
}

fn new_exec_id() -> anyhow::Result<String> {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("cannot read /dev/urandom")?;
    Ok(format!("exec-{:016x}", u64::from_le_bytes(b)))
}
