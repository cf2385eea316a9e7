//! The last steps before `execve`, shared by a container's init and its exec
//! processes: no_new_privileges, seccomp, rlimits, user, capabilities, cwd,
//! env, umask and the executable lookup; then, on `Start`, the exec itself.
//!
//! Runs in a single-threaded helper process that is already inside the
//! container (its mount namespace and root), as root.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxSeccomp, Process};

use super::init::{AgentMsg, InitMsg};
use super::process::Channel;
use super::{caps, rlimits, seccomp, user};

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Looks `arg0` up like execvp does, in the container, with its PATH.
pub fn find_executable(arg0: &str, path_var: Option<&str>, cwd: &Path) -> Result<PathBuf, String> {
    let is_exec = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if arg0.contains('/') {
        let p = if Path::new(arg0).is_absolute() {
            PathBuf::from(arg0)
        } else {
            cwd.join(arg0)
        };
        return match fs::metadata(&p) {
            Ok(_) => Ok(PathBuf::from(arg0)),
            Err(e) => Err(format!("exec: {arg0:?}: {e}")),
        };
    }
    for dir in path_var.unwrap_or("").split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(arg0);
        let abs = if candidate.is_absolute() {
            candidate.clone()
        } else {
            cwd.join(&candidate)
        };
        if is_exec(&abs) {
            return Ok(candidate);
        }
    }
    Err(format!(
        "exec: {arg0:?}: executable file not found in $PATH"
    ))
}

/// The environment: the spec's, plus PATH and HOME when missing (like runc).
pub fn build_env(spec_env: &[String], home: impl FnOnce() -> String) -> Vec<String> {
    let mut env: Vec<String> = spec_env.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.to_string());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home()));
    }
    env
}

/// A process set up and parked before `execve`.
pub struct Launch {
    filter: Option<seccomp::Compiled>,
    nnp: bool,
    /// The executable, or why it cannot be found.
    exe: Result<(PathBuf, CString), String>,
    c_args: Vec<CString>,
    c_env: Vec<CString>,
}

/// Applies everything of `process` (and the container's seccomp profile)
/// that must happen before `execve`, in runc's order. Only the seccomp
/// filter of a no_new_privileges process waits for [`Launch::exec`], so that
/// the helper's own syscalls until then are not filtered.
pub fn prepare(process: &Process, profile: Option<&LinuxSeccomp>) -> Result<Launch, String> {
    let nnp = process.no_new_privileges().unwrap_or(false);
    if nnp {
        // SAFETY: plain prctl.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!("process.noNewPrivileges: {}", errno()));
        }
    }
    let filter = match profile {
        Some(s) => Some(seccomp::compile(s)?),
        None => None,
    };
    if let (Some(f), false) = (&filter, nnp) {
        // Without no_new_privileges installing a filter needs CAP_SYS_ADMIN:
        // do it while we still have it.
        seccomp::install(f).map_err(|e| format!("linux.seccomp: {e}"))?;
    }
    if let Some(l) = process.rlimits() {
        rlimits::apply(l)?;
    }

    // Read while still root: the container's passwd gives HOME.
    let u = process.user();
    let passwd = fs::read_to_string("/etc/passwd").ok();
    let env = build_env(process.env().as_deref().unwrap_or(&[]), || {
        user::home_for(passwd.as_deref(), u.uid())
    });

    let capsets = match process.capabilities() {
        Some(c) => Some(caps::parse(c)?),
        None => None,
    };
    if let Some(c) = &capsets {
        caps::drop_bounding(c)?;
        ::caps::securebits::set_keepcaps(true).map_err(|e| format!("set keep-caps: {e}"))?;
    }
    let cwd = process.cwd().clone();
    let early_chdir = nix::unistd::chdir(&cwd).is_ok();
    let gids: Vec<nix::unistd::Gid> = u
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&gids)
        .map_err(|e| format!("process.user.additionalGids: setgroups: {e}"))?;
    let gid = nix::unistd::Gid::from_raw(u.gid());
    nix::unistd::setresgid(gid, gid, gid)
        .map_err(|e| format!("process.user.gid {}: setgid: {e}", u.gid()))?;
    let uid = nix::unistd::Uid::from_raw(u.uid());
    nix::unistd::setresuid(uid, uid, uid)
        .map_err(|e| format!("process.user.uid {}: setuid: {e}", u.uid()))?;
    if let Some(c) = &capsets {
        ::caps::securebits::set_keepcaps(false).map_err(|e| format!("clear keep-caps: {e}"))?;
        caps::apply(c)?;
    }
    // As the user, so permissions apply (runc tries before and after).
    if let Err(e) = nix::unistd::chdir(&cwd) {
        if !early_chdir {
            return Err(format!(
                "chdir to cwd ({:?}) set in config.json failed: {e}",
                cwd.display().to_string()
            ));
        }
    }
    let umask = u.umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        umask as libc::mode_t,
    ));

    let args = process.args().clone().unwrap_or_default();
    let arg0 = args.first().cloned().unwrap_or_default();
    let path_var = env.iter().find_map(|e| e.strip_prefix("PATH="));
    let exe = find_executable(&arg0, path_var, &cwd).and_then(|exe| {
        CString::new(exe.as_os_str().as_encoded_bytes())
            .map(|c| (exe, c))
            .map_err(|_| "process.args[0] contains NUL".to_string())
    });
    let c_args = args
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "process.args: an argument contains NUL".to_string())?;
    let c_env = env
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "process.env: a variable contains NUL".to_string())?;
    Ok(Launch {
        filter,
        nnp,
        exe,
        c_args,
        c_env,
    })
}

fn exit(code: i32) -> ! {
    // SAFETY: no cleanup wanted (this is a throwaway process).
    unsafe { libc::_exit(code) }
}

impl Launch {
    /// Whether the executable was found (a container's init fails at create
    /// when not, like runc create; an exec fails at start, with exit 127).
    pub fn executable(&self) -> Result<(), String> {
        self.exe.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// Reports `Ready`, waits for `Start` and execs. The control channel is
    /// close-on-exec, so its EOF tells the agent that `execve` succeeded; a
    /// failure is reported as `Error` and the process exits 127. Exits 0
    /// without exec when the agent goes away instead (deleted before start).
    pub fn exec(self, ctl: &Channel) -> ! {
        if let Err(e) = ctl.send(&InitMsg::Ready) {
            let _ = ctl.send(&InitMsg::Error(format!("report ready: {e}")));
            exit(1);
        }
        match ctl.recv::<AgentMsg>(None) {
            Ok(Some(AgentMsg::Start)) => {}
            _ => exit(0),
        }
        // SAFETY: plain signal(2): the ignored SIGPIPE of the Rust runtime must
        // not leak into the container.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let (exe, c_exe) = match &self.exe {
            Ok(e) => e,
            Err(e) => {
                let _ = ctl.send(&InitMsg::Error(e.clone()));
                exit(127);
            }
        };
        if let (Some(f), true) = (&self.filter, self.nnp) {
            if let Err(e) = seccomp::install(f) {
                let _ = ctl.send(&InitMsg::Error(format!("linux.seccomp: {e}")));
                exit(127);
            }
        }
        let err = nix::unistd::execve(c_exe, &self.c_args, &self.c_env).err();
        let e = err.map(|e| e.to_string()).unwrap_or_default();
        let _ = ctl.send(&InitMsg::Error(format!("exec {}: {e}", exe.display())));
        exit(127)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_defaults() {
        let env = build_env(&["A=1".to_string()], || "/root".into());
        assert_eq!(env, vec!["A=1", DEFAULT_PATH, "HOME=/root"]);
        let env = build_env(&["PATH=/x".into(), "HOME=/h".into()], || unreachable!());
        assert_eq!(env, vec!["PATH=/x", "HOME=/h"]);
    }

    #[test]
    fn executable_lookup() {
        let cwd = Path::new("/");
        assert_eq!(
            find_executable("sh", Some("/nonexistent:/bin:/usr/bin"), cwd).unwrap(),
            PathBuf::from("/bin/sh")
        );
        let e = find_executable("no-such-program-x", Some("/bin"), cwd).unwrap_err();
        assert_eq!(
            e,
            "exec: \"no-such-program-x\": executable file not found in $PATH"
        );
        assert!(find_executable("/no/such", None, cwd)
            .unwrap_err()
            .starts_with("exec: \"/no/such\""));
        assert_eq!(
            find_executable("/bin/sh", None, cwd).unwrap(),
            PathBuf::from("/bin/sh")
        );
    }
}
