//! Exec processes: extra processes in a running container (runc exec,
//! containerd's Exec), each with its own stdio, exit and control channel,
//! keyed by exec id within their container.
//!
//! The agent opens the container init's namespaces (`/proc/PID/ns/*`, the
//! ones that differ from its own) and hands them to a helper, `husk-agent
//! container-exec` (see `exec_init`), which joins the container's cgroup
//! and those namespaces and parks before `execve` until `StartProcess`.

use std::collections::HashMap;
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use husk_protocol::{ContainerStatus, ExecProcess, PassedFd, Response};
use oci_spec::runtime::Process;

use super::exec_init::{ExecConfig, NsFd};
use super::helper::{self, StartError};
use super::passfd;
use super::process::{exits, lock, Channel, ExitCell, Stdio, CONFIG_FD};
use super::{console_size, err, spec, status_name, Container, Registry, EXEC_ARG, KILL_TIMEOUT};

pub struct Exec {
    pub exec_id: String,
    /// The process (in the container's pid namespace if it has one).
    pub pid: i32,
    pub exit: Arc<ExitCell>,
    pub stdio: Arc<Stdio>,
    /// Its passed descriptors (`--preserve-fds`).
    pub passed: Arc<passfd::Passed>,
    /// Control channel to the helper until it execs.
    ctl: Mutex<Option<Channel>>,
}

/// An exec id is taken (`Creating`) before its helper starts, so a second
/// request with the same id fails at once.
pub enum Slot {
    Creating,
    Ready(Arc<Exec>),
}

/// Namespaces an exec joins, in order: the mount namespace last, so the
/// others are joined from the agent's view. User and time namespaces are
/// never created for a container (see `spec::validate`).
const NAMESPACES: [(&str, libc::c_int); 8] = [
    ("user", libc::CLONE_NEWUSER),
    ("time", libc::CLONE_NEWTIME),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("mnt", libc::CLONE_NEWNS),
];

/// An opened namespace: its fd, CLONE_NEW* type and /proc name.
type Namespace = (OwnedFd, libc::c_int, &'static str);

/// The namespaces of `pid` that differ from the agent's, opened.
/// `Ok(None)` when the process is gone.
fn open_namespaces(pid: i32) -> Result<Option<Vec<Namespace>>, String> {
    let mut out = Vec::new();
    for (name, flag) in NAMESPACES {
        let mine = std::fs::metadata(format!("/proc/self/ns/{name}"));
        let theirs = match File::open(format!("/proc/{pid}/ns/{name}")) {
            Ok(f) => f,
            // A kernel without this namespace type has no file for anyone.
            Err(e) if e.kind() == ErrorKind::NotFound && mine.is_err() => continue,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("open /proc/{pid}/ns/{name}: {e}")),
        };
        let t = theirs
            .metadata()
            .map_err(|e| format!("stat /proc/{pid}/ns/{name}: {e}"))?;
        if let Ok(m) = mine {
            if m.dev() == t.dev() && m.ino() == t.ino() {
                continue;
            }
        }
        if flag == libc::CLONE_NEWUSER || flag == libc::CLONE_NEWTIME {
            return Err(format!(
                "the container has its own {name} namespace: not supported"
            ));
        }
        out.push((OwnedFd::from(theirs), flag, name));
    }
    Ok(Some(out))
}

/// runc's defaults for an exec: what its process does not set comes from
/// the container's process (capabilities, no_new_privileges, rlimits), so
/// a bare exec is not more privileged than the container.
fn with_defaults(exec: &Process, init: &Process) -> Process {
    let mut p = exec.clone();
    if p.capabilities().is_none() {
        p.set_capabilities(init.capabilities().clone());
    }
    if p.no_new_privileges().is_none() {
        p.set_no_new_privileges(init.no_new_privileges());
    }
    if p.rlimits().as_ref().is_none_or(|r| r.is_empty()) {
        p.set_rlimits(init.rlimits().clone());
    }
    p
}

impl Container {
    pub(super) fn exec(&self, exec_id: &str) -> Result<Arc<Exec>, Response> {
        match lock(&self.execs).get(exec_id) {
            Some(Slot::Ready(e)) => Ok(e.clone()),
            Some(Slot::Creating) => Err(err(format!(
                "process {exec_id} of container {} is being created",
                self.id
            ))),
            None => Err(err(format!(
                "process {exec_id} of container {} does not exist",
                self.id
            ))),
        }
    }

    pub(super) fn exec_list(&self) -> Vec<Arc<Exec>> {
        lock(&self.execs)
            .values()
            .filter_map(|s| match s {
                Slot::Ready(e) => Some(e.clone()),
                Slot::Creating => None,
            })
            .collect()
    }

    /// pid → exec id of every exec (exited ones included).
    pub(super) fn exec_pids(&self) -> HashMap<i32, String> {
        self.exec_list()
            .into_iter()
            .map(|e| (e.pid, e.exec_id.clone()))
            .collect()
    }

    fn spawn_exec(&self, req: &ExecProcess, fds: &[PassedFd]) -> Result<Exec, String> {
        let gone = || format!("container {} is not running", self.id);
        let namespaces = open_namespaces(self.pid)?.ok_or_else(gone)?;
        // The init's root, which the exec chroots into after joining the
        // mount namespace: the namespace's own root is only the container's
        // when the agent's root is the namespace's (not so in a chroot).
        let root = match File::open(format!("/proc/{}/root/", self.pid)) {
            Ok(f) => OwnedFd::from(f),
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(gone()),
            Err(e) => return Err(format!("open /proc/{}/root: {e}", self.pid)),
        };
        // Opened before this check: had the init been reaped (and its pid
        // reused) first, the exit would be recorded by now.
        if self.exit.get().is_some() {
            return Err(gone());
        }
        let (stdio, child_stdio) = Stdio::new(req.terminal, console_size(&req.process))
            .map_err(|e| format!("stdio: {e}"))?;
        let (passed, passed_fds) = passfd::Passed::create(fds)?;
        let config = ExecConfig {
            process: with_defaults(&req.process, &self.process),
            terminal: req.terminal,
            cgroup: self.cgroup.path.clone(),
            seccomp: self.seccomp.clone(),
            namespaces: namespaces
                .iter()
                .enumerate()
                .map(|(i, (_, flag, name))| NsFd {
                    fd: CONFIG_FD + 1 + i as i32,
                    flag: *flag,
                    name: name.to_string(),
                })
                .collect(),
            root_fd: CONFIG_FD + 1 + namespaces.len() as i32,
            passed_fds: passed_fds.len(),
        };
        let mut extra: Vec<BorrowedFd<'_>> = namespaces.iter().map(|(f, _, _)| f.as_fd()).collect();
        extra.push(root.as_fd());
        extra.extend(passfd::borrow(&passed_fds));
        let pid_ns = namespaces
            .iter()
            .any(|(_, flag, _)| *flag == libc::CLONE_NEWPID);
        let parked = helper::start(
            EXEC_ARG,
            "the exec process",
            &config,
            child_stdio,
            &extra,
            pid_ns,
        )?;
        // The helper has its copies; ours would hold the pipes open.
        drop(extra);
        drop(passed_fds);
        Ok(Exec {
            exec_id: req.exec_id.clone(),
            pid: parked.pid,
            exit: parked.exit,
            stdio: Arc::new(stdio),
            passed: Arc::new(passed),
            ctl: Mutex::new(Some(parked.ctl)),
        })
    }
}

impl Registry {
    /// Prepares an exec process whose own fds 3, 4, ... are `fds`.
    pub fn exec(&self, req: &ExecProcess, fds: &[PassedFd]) -> Response {
        let (id, exec_id) = (&req.id, &req.exec_id);
        if !husk_protocol::valid_container_id(exec_id) {
            return err(format!(
                "invalid exec id {exec_id:?}: only [A-Za-z0-9_+.-] allowed"
            ));
        }
        if let Err(e) = spec::validate_process(&req.process) {
            return err(format!(
                "exec {exec_id} in container {id}: invalid process: {e}"
            ));
        }
        let c = match self.get(id) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let _ops = lock(&c.ops);
        match c.status() {
            ContainerStatus::Running => {}
            s => return err(format!("container {id} is not running: {}", status_name(s))),
        }
        {
            let mut execs = lock(&c.execs);
            if execs.contains_key(exec_id) {
                return err(format!(
                    "process {exec_id} already exists in container {id}"
                ));
            }
            execs.insert(exec_id.clone(), Slot::Creating);
        }
        match c.spawn_exec(req, fds) {
            Ok(e) => {
                lock(&c.execs).insert(exec_id.clone(), Slot::Ready(Arc::new(e)));
                Response::Ok
            }
            Err(e) => {
                lock(&c.execs).remove(exec_id);
                err(format!("exec {exec_id} in container {id}: {e}"))
            }
        }
    }

    pub fn start_process(&self, id: &str, exec_id: &str) -> Response {
        let (c, e) = match self.get(id).and_then(|c| c.exec(exec_id).map(|e| (c, e))) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let what = format!("process {exec_id} of container {id}");
        // A frozen helper could not exec: no pause while it does.
        let _ops = lock(&c.ops);
        if c.status() == ContainerStatus::Paused {
            return err(format!("{what}: cannot start in a paused container"));
        }
        let Some(ctl) = lock(&e.ctl).take() else {
            return err(format!("{what} has already been started"));
        };
        match helper::release(ctl, e.pid) {
            Ok(()) => Response::Ok,
            Err(StartError::Gone) => err(format!("{what} has exited")),
            Err(StartError::Exec(m)) => err(format!("{what}: exec failed: {m}")),
            Err(StartError::Broken(m)) => err(format!("{what}: start: {m} (process killed)")),
        }
    }

    pub fn delete_process(&self, id: &str, exec_id: &str) -> Response {
        let (c, e) = match self.get(id).and_then(|c| c.exec(exec_id).map(|e| (c, e))) {
            Ok(x) => x,
            Err(r) => return r,
        };
        if e.exit.get().is_none() {
            // Never started: it is parked, and goes (like a created container).
            let Some(ctl) = lock(&e.ctl).take() else {
                return err(format!(
                    "cannot delete process {exec_id} of container {id} that is not stopped: running"
                ));
            };
            drop(ctl);
            // SAFETY: plain syscall (the pid is ours until reaped).
            unsafe { libc::kill(e.pid, libc::SIGKILL) };
            if e.exit.wait_timeout(KILL_TIMEOUT).is_none() {
                return err(format!(
                    "process {exec_id} of container {id} did not exit after SIGKILL"
                ));
            }
        }
        exits().forget(e.pid);
        lock(&c.execs).remove(exec_id);
        Response::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn process(mut v: serde_json::Value) -> Process {
        v["user"] = json!({ "uid": 0, "gid": 0 });
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn exec_defaults_from_the_container() {
        let init = process(json!({
            "args": ["sleep"], "cwd": "/",
            "capabilities": { "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"] },
            "noNewPrivileges": true,
            "rlimits": [{ "type": "RLIMIT_NOFILE", "soft": 10, "hard": 10 }]
        }));
        let bare = with_defaults(&process(json!({ "args": ["sh"], "cwd": "/tmp" })), &init);
        assert_eq!(bare.capabilities(), init.capabilities());
        assert_eq!(bare.no_new_privileges(), Some(true));
        assert_eq!(bare.rlimits(), init.rlimits());
        assert_eq!(bare.args().as_deref(), Some(&["sh".to_string()][..]));
        assert_eq!(bare.cwd().to_str(), Some("/tmp"));
        let own = process(json!({
            "args": ["sh"], "cwd": "/",
            "capabilities": { "bounding": [] },
            "noNewPrivileges": false,
            "rlimits": [{ "type": "RLIMIT_CORE", "soft": 0, "hard": 0 }]
        }));
        let p = with_defaults(&own, &init);
        assert_eq!(p.capabilities(), own.capabilities());
        assert_eq!(p.no_new_privileges(), Some(false));
        assert_eq!(p.rlimits(), own.rlimits());
    }
}
