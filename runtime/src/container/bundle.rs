//! Reading and checking an OCI bundle.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("invalid {0}: {1}")]
    Invalid(PathBuf, String),
    #[error("invalid {0}: {1} is required")]
    Missing(PathBuf, &'static str),
    #[error("rootfs ({0}) does not exist")]
    NoRootfs(PathBuf),
    #[error("rootfs ({0}) is not a directory")]
    RootfsNotDir(PathBuf),
}

/// A loaded bundle: absolute paths and the parsed spec.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub spec: Spec,
}

impl Bundle {
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let dir = std::path::absolute(dir).map_err(|e| BundleError::Read(dir.into(), e))?;
        let path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&path).map_err(|e| BundleError::Read(path.clone(), e))?;
        // serde_json names the field and position of what is wrong.
        let spec: Spec = serde_json::from_str(&text)
            .map_err(|e| BundleError::Invalid(path.clone(), e.to_string()))?;
        let root = spec
            .root()
            .as_ref()
            .ok_or(BundleError::Missing(path.clone(), "root"))?;
        if root.path().as_os_str().is_empty() {
            return Err(BundleError::Missing(path.clone(), "root.path"));
        }
        let process = spec
            .process()
            .as_ref()
            .ok_or(BundleError::Missing(path.clone(), "process"))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(BundleError::Missing(path.clone(), "process.args"));
        }
        if !process.cwd().is_absolute() {
            return Err(BundleError::Invalid(
                path.clone(),
                format!("process.cwd {:?} is not an absolute path", process.cwd()),
            ));
        }
        for (i, m) in spec.mounts().iter().flatten().enumerate() {
            if !m.destination().is_absolute() {
                return Err(BundleError::Invalid(
                    path.clone(),
                    format!(
                        "mounts[{i}].destination {:?} is not an absolute path",
                        m.destination()
                    ),
                ));
            }
        }
        let rootfs = dir.join(root.path());
        match std::fs::metadata(&rootfs) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(BundleError::RootfsNotDir(rootfs)),
            Err(_) => return Err(BundleError::NoRootfs(rootfs)),
        }
        check_unsupported(&spec).map_err(|e| BundleError::Invalid(path.clone(), e))?;
        check_proc_sys(&spec, &rootfs).map_err(|e| BundleError::Invalid(path.clone(), e))?;
        Ok(Bundle { dir, rootfs, spec })
    }
}

/// What no guest can do, refused before a VM is booted for it.
fn check_unsupported(spec: &Spec) -> Result<(), String> {
    use oci_spec::runtime::LinuxSeccompAction;
    if let Some(s) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        // The notify fd would have to leave the guest for an agent on the
        // host: husk has no such path (the agent refuses it too).
        let notify = s.default_action() == LinuxSeccompAction::ScmpActNotify
            || s.syscalls()
                .iter()
                .flatten()
                .any(|r| r.action() == LinuxSeccompAction::ScmpActNotify);
        if s.listener_path().is_some() || notify {
            return Err(
                "linux.seccomp: SCMP_ACT_NOTIFY and listenerPath are not supported \
                        (no seccomp agent can reach a process inside the VM)"
                    .into(),
            );
        }
    }
    Ok(())
}

/// runc refuses a proc or sysfs mount whose destination exists in the
/// rootfs as anything but a directory (a symlink there could send it
/// elsewhere); the agent checks again in the guest.
fn check_proc_sys(spec: &Spec, rootfs: &Path) -> Result<(), String> {
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let typ = m.typ().as_deref().unwrap_or("");
        if !matches!(typ, "proc" | "sysfs") {
            continue;
        }
        // Lexically, as runc does: no symlink in it is followed.
        let rel = m.destination().strip_prefix("/").unwrap_or(m.destination());
        if let Ok(md) = std::fs::symlink_metadata(rootfs.join(rel)) {
            if !md.is_dir() {
                return Err(format!(
                    "mounts[{i}] ({}): filesystem {typ:?} must be mounted on ordinary directory",
                    m.destination().display()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(tag: &str, config: &str, rootfs: bool) -> PathBuf {
        let d = std::env::temp_dir().join(format!("husk-bundle-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        if rootfs {
            std::fs::create_dir(d.join("rootfs")).unwrap();
        }
        std::fs::write(d.join("config.json"), config).unwrap();
        d
    }

    const GOOD: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
        "process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0}}}"#;

    #[test]
    fn good_bundle() {
        let d = bundle("good", GOOD, true);
        let b = Bundle::load(&d).unwrap();
        assert_eq!(b.rootfs, d.join("rootfs"));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let d = bundle("norootfs", GOOD, false);
        let e = Bundle::load(&d).unwrap_err().to_string();
        assert!(
            e.starts_with("rootfs (") && e.ends_with("does not exist"),
            "{e}"
        );

        let d = bundle(
            "badtype",
            &GOOD.replace("\"uid\":0", "\"uid\":\"root\""),
            true,
        );
        let e = Bundle::load(&d).unwrap_err().to_string();
        assert!(e.contains("invalid type") && e.contains("line"), "{e}");

        let d = bundle("noargs", &GOOD.replace("\"args\":[\"sh\"],", ""), true);
        let e = Bundle::load(&d).unwrap_err().to_string();
        assert!(e.ends_with("process.args is required"), "{e}");

        let d = bundle("garbage", "{not json", true);
        assert!(Bundle::load(&d)
            .unwrap_err()
            .to_string()
            .starts_with("invalid "));

        // Issue 15: refused here, before any VM, with runc's wording.
        let d = bundle(
            "procsymlink",
            &GOOD.replace(
                "\"process\"",
                r#""mounts":[{"destination":"/proc","type":"proc","source":"proc"}],"process""#,
            ),
            true,
        );
        std::os::unix::fs::symlink("/symlink", d.join("rootfs/proc")).unwrap();
        let e = Bundle::load(&d).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "mounts[0] (/proc): filesystem \"proc\" must be mounted on ordinary directory"
            ),
            "{e}"
        );
        std::fs::remove_file(d.join("rootfs/proc")).unwrap();
        std::fs::create_dir(d.join("rootfs/proc")).unwrap();
        Bundle::load(&d).unwrap();

        for seccomp in [
            r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/agent.sock",
                "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        ] {
            let d = bundle(
                "notify",
                &GOOD.replace(
                    "\"process\"",
                    &format!(r#""linux":{{"seccomp":{seccomp}}},"process""#),
                ),
                true,
            );
            let e = Bundle::load(&d).unwrap_err().to_string();
            assert!(
                e.ends_with("linux.seccomp: SCMP_ACT_NOTIFY and listenerPath are not supported (no seccomp agent can reach a process inside the VM)"),
                "{e}"
            );
        }

        let e = Bundle::load(Path::new("/nonexistent-bundle"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read /nonexistent-bundle/config.json"),
            "{e}"
        );
    }
}
