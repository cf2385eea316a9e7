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
    /// Pass our fds 3..3+N-1 to the process as its own (pipes, FIFOs,
    /// stream sockets and /dev/null; anything else is refused).
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
    let passed_fds = super::lifecycle::check_preserved_fds(a.preserve_fds)?;
    match st.status() {
        Status::Stopped => bail!("cannot exec in a stopped container"),
        Status::Paused if !a.ignore_paused => {
            bail!("cannot exec in a paused container (use --ignore-paused to override)")
        }
        _ => {}
    }
    let dir = store.dir(&a.id)?;
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
        passed_fds,
    };
    if a.detach {
        let pid = spawn_monitor(root, &dir, &req)?;
        if let Some(p) = &a.pid_file {
            super::lifecycle::write_pid_file(p, pid)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    monitor::block_signals();
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
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--root")
        .arg(root)
        .arg("__exec-monitor")
        .arg(&req.id)
        .arg(&req.exec_id)
        .env("HUSK_SYNC_FD", wr.as_raw_fd().to_string());
    let passed = req.passed_fds.len();
    super::lifecycle::inherit_passed_fds(&mut cmd, passed, wr.as_raw_fd());
    let child = cmd.spawn().context("cannot start the exec monitor");
    drop(wr);
    // The exec monitor has them now; ours would keep pipes open.
    if child.is_ok() {
        husk::passfd::close_passed(passed);
    }
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    if let Err(e) = super::sync::read_within(rd, super::sync::create_timeout()) {
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
            // runc takes CAP_NET_ADMIN or NET_ADMIN, any case.
            let name = c.to_ascii_uppercase();
            let cap: Capability = name
                .strip_prefix("CAP_")
                .unwrap_or(&name)
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ExecArgs,
    }

    fn args(v: &[&str]) -> ExecArgs {
        T::parse_from(std::iter::once("exec").chain(v.iter().copied())).a
    }

    /// A state dir whose create.json carries `process`.
    fn state_dir(process: serde_json::Value) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        let mut spec = serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap();
        spec["process"] = process;
        let req = serde_json::json!({
            "id": "c", "spec": spec, "bundle": "/b", "rootfs": "/b/rootfs",
            "created": "now", "vmm": "/v", "kernel": "/k", "initrd": "/i",
            "memory_mib": 128, "vcpus": 1, "console_socket": null
        });
        std::fs::write(d.0.join("create.json"), req.to_string()).unwrap();
        d
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "husk-exec-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn flags_override_the_containers_process() {
        let d = state_dir(serde_json::json!({
            "cwd": "/srv", "args": ["init"], "env": ["PATH=/bin", "A=1"],
            "user": {"uid": 5, "gid": 5}, "terminal": true
        }));
        let a = args(&[
            "-e",
            "A=2",
            "-e",
            "B=3",
            "--cwd",
            "/tmp",
            "-u",
            "1000:100",
            "-g",
            "7",
            "--cap",
            "net_admin",
            "--no-new-privs",
            "c",
            "sh",
            "-c",
            "echo -n hi",
        ]);
        let p = process_from_flags(&d.0, &a).unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["sh", "-c", "echo -n hi"]);
        assert_eq!(p.cwd().to_str(), Some("/tmp"));
        assert_eq!(p.env().as_ref().unwrap(), &["PATH=/bin", "A=2", "B=3"]);
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 100));
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &[7]);
        assert_eq!(p.terminal(), Some(false), "no --tty: no terminal");
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p.capabilities().as_ref().unwrap();
        for set in [caps.bounding(), caps.effective(), caps.permitted()] {
            assert!(set.as_ref().unwrap().contains(&Capability::NetAdmin));
        }
        validate(&p).unwrap();
    }

    #[test]
    fn defaults_come_from_the_container() {
        let d = state_dir(serde_json::json!({
            "cwd": "/srv", "args": ["init"], "env": ["PATH=/bin"], "user": {"uid": 5, "gid": 6}
        }));
        let p = process_from_flags(&d.0, &args(&["-t", "c", "true"])).unwrap();
        assert_eq!(p.cwd().to_str(), Some("/srv"));
        assert_eq!((p.user().uid(), p.user().gid()), (5, 6));
        assert_eq!(p.terminal(), Some(true));
    }

    #[test]
    fn bad_flags_are_refused() {
        let d = state_dir(
            serde_json::json!({"cwd": "/", "args": ["init"], "user": {"uid": 0, "gid": 0}}),
        );
        let e = |v: &[&str]| process_from_flags(&d.0, &args(v)).unwrap_err().to_string();
        assert_eq!(e(&["c"]), "exec args cannot be empty");
        assert!(e(&["-u", "bob", "c", "true"]).contains("want UID[:GID]"));
        assert!(e(&["--cap", "CAP_NOPE", "c", "true"]).contains("unknown capability"));
        let p = process_from_flags(&d.0, &args(&["--cwd", "rel", "c", "true"])).unwrap();
        assert_eq!(
            validate(&p).unwrap_err().to_string(),
            "cwd property must be an absolute path"
        );
    }
}
