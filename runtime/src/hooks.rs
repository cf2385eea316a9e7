//! OCI lifecycle hooks. Hook binaries are host paths named by whoever wrote
//! the spec (the engine, the site's policy), so every hook runs on the host,
//! in the runtime's namespaces, with the container's state on its stdin;
//! the guest never chooses what runs here. The hooks the spec runs "in the
//! container's namespaces" (createContainer, startContainer) cannot: those
//! namespaces are inside the VM. They run on the host at the same points of
//! the lifecycle (docs/architecture.md, "OCI hooks").

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use oci_spec::runtime::{ContainerState, Hook, Hooks, Spec, State};

/// What a failed hook's error carries of its stdout and stderr.
const OUTPUT_KEEP: usize = 4096;

/// The points of the lifecycle, in the spec's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Prestart => "prestart",
            Kind::CreateRuntime => "createRuntime",
            Kind::CreateContainer => "createContainer",
            Kind::StartContainer => "startContainer",
            Kind::Poststart => "poststart",
            Kind::Poststop => "poststop",
        }
    }

    /// The container's status the hook is told, as runc tells it.
    fn status(self) -> ContainerState {
        match self {
            Kind::Prestart | Kind::CreateRuntime | Kind::CreateContainer => {
                ContainerState::Creating
            }
            Kind::StartContainer => ContainerState::Created,
            Kind::Poststart => ContainerState::Running,
            Kind::Poststop => ContainerState::Stopped,
        }
    }

    pub const ALL: [Kind; 6] = [
        Kind::Prestart,
        Kind::CreateRuntime,
        Kind::CreateContainer,
        Kind::StartContainer,
        Kind::Poststart,
        Kind::Poststop,
    ];
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hooks.{kind}[{index}]: {why}")]
    Invalid {
        kind: &'static str,
        index: usize,
        why: String,
    },
    #[error("error running {kind} hook #{index}: error running hook {path}: {why}")]
    Start {
        kind: &'static str,
        index: usize,
        path: String,
        why: std::io::Error,
    },
    #[error("error running {kind} hook #{index}: hook ran past specified timeout of {secs}.0s")]
    Timeout {
        kind: &'static str,
        index: usize,
        secs: i64,
    },
    #[error(
        "error running {kind} hook #{index}: error running hook: {status}, stdout: {stdout}, stderr: {stderr}"
    )]
    Failed {
        kind: &'static str,
        index: usize,
        status: std::process::ExitStatus,
        stdout: String,
        stderr: String,
    },
}

/// The hooks of one kind, in order.
pub fn of(hooks: &Hooks, kind: Kind) -> &[Hook] {
    #[allow(deprecated)]
    // prestart: deprecated in the spec, still run by runc and needed by old tools
    let list = match kind {
        Kind::Prestart => hooks.prestart(),
        Kind::CreateRuntime => hooks.create_runtime(),
        Kind::CreateContainer => hooks.create_container(),
        Kind::StartContainer => hooks.start_container(),
        Kind::Poststart => hooks.poststart(),
        Kind::Poststop => hooks.poststop(),
    };
    list.as_deref().unwrap_or(&[])
}

/// The spec's rules for a hook, checked before anything is created: an
/// absolute path, a timeout above zero.
pub fn validate(spec: &Spec) -> Result<(), HookError> {
    let Some(hooks) = spec.hooks() else {
        return Ok(());
    };
    for kind in Kind::ALL {
        for (index, h) in of(hooks, kind).iter().enumerate() {
            let invalid = |why: String| HookError::Invalid {
                kind: kind.name(),
                index,
                why,
            };
            if !h.path().is_absolute() {
                return Err(invalid(format!(
                    "path {:?} is not absolute",
                    h.path().display().to_string()
                )));
            }
            if let Some(t) = h.timeout() {
                if t <= 0 {
                    return Err(invalid(format!("timeout {t} must be greater than zero")));
                }
            }
        }
    }
    Ok(())
}

/// The state a hook reads on its stdin (the runtime spec's state).
pub fn state_json(kind: Kind, id: &str, pid: Option<i32>, bundle: &Path, spec: &Spec) -> Vec<u8> {
    let mut st = State::default();
    st.set_version(spec.version().clone());
    st.set_id(id.to_string());
    st.set_status(kind.status());
    st.set_pid(pid.filter(|p| *p > 0));
    st.set_bundle(bundle.to_path_buf());
    st.set_annotations(spec.annotations().clone().filter(|a| !a.is_empty()));
    // A State is plain strings and numbers: serializing cannot fail.
    serde_json::to_vec(&st).unwrap_or_default()
}

/// Runs every hook of `kind` in order; the first failure ends the run.
pub fn run(kind: Kind, spec: &Spec, state: &[u8], cwd: &Path) -> Result<(), HookError> {
    let Some(hooks) = spec.hooks() else {
        return Ok(());
    };
    for (index, h) in of(hooks, kind).iter().enumerate() {
        run_one(kind, index, h, state, cwd)?;
    }
    Ok(())
}

/// Runs every hook of `kind`, all of them whatever fails, and returns the
/// failures: poststart and poststop failures are warnings in the spec.
pub fn run_all(kind: Kind, spec: &Spec, state: &[u8], cwd: &Path) -> Vec<HookError> {
    let Some(hooks) = spec.hooks() else {
        return Vec::new();
    };
    of(hooks, kind)
        .iter()
        .enumerate()
        .filter_map(|(index, h)| run_one(kind, index, h, state, cwd).err())
        .collect()
}

fn run_one(kind: Kind, index: usize, h: &Hook, state: &[u8], cwd: &Path) -> Result<(), HookError> {
    let mut cmd = Command::new(h.path());
    if let Some(args) = h.args().as_deref().filter(|a| !a.is_empty()) {
        cmd.arg0(&args[0]).args(&args[1..]);
    }
    // No env in the hook: it inherits ours, as runc's hooks do.
    if let Some(env) = h.env() {
        cmd.env_clear();
        for kv in env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
    }
    // Its own process group, so a timeout ends whatever it started too.
    cmd.current_dir(cwd)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|why| HookError::Start {
        kind: kind.name(),
        index,
        path: h.path().display().to_string(),
        why,
    })?;
    // The state goes in from a thread that is never waited for: a hook
    // that does not read its stdin (or leaves a child holding it) must not
    // block us.
    if let Some(mut w) = child.stdin.take() {
        let state = state.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&state);
        });
    }
    let stdout = child.stdout.take().map(keep_head);
    let stderr = child.stderr.take().map(keep_head);
    let deadline = h
        .timeout()
        .map(|t| Instant::now() + Duration::from_secs(t.max(1) as u64));
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) => {}
            Err(_) => break None,
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // SAFETY: kill(2) of the hook's own process group (pgid = its pid).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return Err(HookError::Timeout {
                kind: kind.name(),
                index,
                secs: h.timeout().unwrap_or(0),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let status = match status {
        Some(s) => s,
        None => child.wait().map_err(|why| HookError::Start {
            kind: kind.name(),
            index,
            path: h.path().display().to_string(),
            why,
        })?,
    };
    if status.success() {
        return Ok(());
    }
    let text = |h: Option<JoinHandle<Vec<u8>>>| {
        let bytes = h.and_then(|h| h.join().ok()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).trim_end().to_string()
    };
    Err(HookError::Failed {
        kind: kind.name(),
        index,
        status,
        stdout: text(stdout),
        stderr: text(stderr),
    })
}

/// Reads a hook's output to its end, keeping the first OUTPUT_KEEP bytes.
/// A hook that left a child holding the pipe is not waited for: the reader
/// is only joined when the hook failed, and then the output is what it is.
fn keep_head<R: Read + Send + 'static>(mut r: R) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = OUTPUT_KEEP.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        kept
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{HookBuilder, HooksBuilder, SpecBuilder};

    fn spec_with(kind: Kind, hooks: Vec<Hook>) -> Spec {
        let mut b = HooksBuilder::default();
        #[allow(deprecated)]
        {
            b = match kind {
                Kind::Prestart => b.prestart(hooks),
                Kind::CreateRuntime => b.create_runtime(hooks),
                Kind::CreateContainer => b.create_container(hooks),
                Kind::StartContainer => b.start_container(hooks),
                Kind::Poststart => b.poststart(hooks),
                Kind::Poststop => b.poststop(hooks),
            };
        }
        SpecBuilder::default()
            .hooks(b.build().unwrap())
            .build()
            .unwrap()
    }

    fn sh(script: &str, timeout: Option<i64>) -> Hook {
        let mut h = HookBuilder::default()
            .path("/bin/sh")
            .args(vec!["sh".to_string(), "-c".to_string(), script.to_string()])
            .env(vec!["HOOK_VAR=v1".to_string()])
            .build()
            .unwrap();
        h.set_timeout(timeout);
        h
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("husk-hooks-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn state_on_stdin_env_args_cwd() {
        let d = scratch("stdin");
        let spec = spec_with(
            Kind::CreateRuntime,
            vec![sh(
                "cat > state.json; echo \"$0 $HOOK_VAR ${HOME:-nohome}\" > env.txt",
                None,
            )],
        );
        let state = state_json(Kind::CreateRuntime, "c1", Some(42), &d, &spec);
        run(Kind::CreateRuntime, &spec, &state, &d).unwrap();
        let got: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("state.json")).unwrap()).unwrap();
        assert_eq!(got["id"], "c1");
        assert_eq!(got["status"], "creating");
        assert_eq!(got["pid"], 42);
        assert_eq!(got["bundle"], d.to_str().unwrap());
        // The hook's env is exactly the one given.
        assert_eq!(
            std::fs::read_to_string(d.join("env.txt")).unwrap(),
            "sh v1 nohome\n"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn failure_stops_the_run_and_says_what_the_hook_said() {
        let d = scratch("fail");
        let spec = spec_with(
            Kind::Prestart,
            vec![
                sh("echo out; echo bad thing >&2; exit 3", None),
                sh("touch second-ran", None),
            ],
        );
        let e = run(Kind::Prestart, &spec, b"{}", &d)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("error running prestart hook #0: error running hook: exit status: 3"),
            "{e}"
        );
        assert!(
            e.contains("stdout: out") && e.contains("stderr: bad thing"),
            "{e}"
        );
        assert!(!d.join("second-ran").exists());
        // poststart/poststop style: every hook runs, failures are returned.
        let errs = run_all(Kind::Prestart, &spec, b"{}", &d);
        assert_eq!(errs.len(), 1);
        assert!(d.join("second-ran").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn timeout_kills_the_hook_and_what_it_started() {
        let d = scratch("timeout");
        // A hook that never reads its stdin and leaves a child holding its
        // stdout: the timeout still ends it, and fast.
        let spec = spec_with(
            Kind::Poststop,
            vec![sh("sleep 30 & echo $! > child.pid; sleep 30", Some(1))],
        );
        let big = vec![b'x'; 1 << 20];
        let t = Instant::now();
        let e = run(Kind::Poststop, &spec, &big, &d).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert_eq!(
            e.to_string(),
            "error running poststop hook #0: hook ran past specified timeout of 1.0s"
        );
        let pid: i32 = std::fs::read_to_string(d.join("child.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background sleep went with the group (reaped by init or gone).
        std::thread::sleep(Duration::from_millis(200));
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false);
        assert!(!alive, "the hook's child {pid} survived its timeout");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn validation() {
        let rel = HookBuilder::default().path("bin/hook").build().unwrap();
        let e = validate(&spec_with(Kind::Poststart, vec![rel])).unwrap_err();
        assert!(
            e.to_string()
                .contains("hooks.poststart[0]: path \"bin/hook\" is not absolute"),
            "{e}"
        );
        let e = validate(&spec_with(Kind::CreateRuntime, vec![sh("true", Some(0))])).unwrap_err();
        assert!(
            e.to_string()
                .contains("timeout 0 must be greater than zero"),
            "{e}"
        );
        validate(&spec_with(Kind::CreateRuntime, vec![sh("true", Some(5))])).unwrap();
        let missing = HookBuilder::default()
            .path("/nonexistent/hook")
            .build()
            .unwrap();
        let spec = spec_with(Kind::CreateRuntime, vec![missing]);
        let e = run(Kind::CreateRuntime, &spec, b"{}", Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/hook"), "{e}");
    }
}
