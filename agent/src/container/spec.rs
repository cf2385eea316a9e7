//! What husk supports of an OCI runtime spec, checked before anything is
//! created. Every error names the offending field.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use super::{caps, rlimits, seccomp};

/// runc's container id rule (`husk_protocol::valid_container_id`).
pub fn validate_id(id: &str) -> Result<(), String> {
    if husk_protocol::valid_container_id(id) {
        Ok(())
    } else {
        Err(format!(
            "invalid container id {id:?}: only [A-Za-z0-9_+.-] allowed"
        ))
    }
}

/// The namespaces the spec asks for: (type, path to join).
pub fn namespaces(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<String>)> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .iter()
        .map(|n| {
            (
                n.typ(),
                n.path()
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned())
                    .filter(|p| !p.is_empty()),
            )
        })
        .collect()
}

pub fn has_namespace(spec: &Spec, t: LinuxNamespaceType) -> bool {
    namespaces(spec).iter().any(|(n, _)| *n == t)
}

/// A namespace of its own (listed, and not joined by path).
pub fn has_new_namespace(spec: &Spec, t: LinuxNamespaceType) -> bool {
    namespaces(spec).iter().any(|(n, p)| *n == t && p.is_none())
}

fn ns_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mount",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "network",
        LinuxNamespaceType::Time => "time",
    }
}

/// runc's sysctl rules: only namespaced sysctls, and only when the container
/// has the namespace.
fn validate_sysctl(spec: &Spec, key: &str) -> Result<(), String> {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let field = format!("linux.sysctl[{key:?}]");
    if key.contains('/') || key.contains("..") || key.is_empty() {
        return Err(format!("{field}: invalid sysctl name"));
    }
    if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        if !has_namespace(spec, LinuxNamespaceType::Ipc) {
            return Err(format!(
                "{field}: sysctl {key:?} is not allowed in the guest's ipc namespace"
            ));
        }
        return Ok(());
    }
    if key.starts_with("net.") {
        // With the network configured (ConfigureNetwork), the guest's network namespace is the
        // container's: the host left the spec's out of it.
        if !has_namespace(spec, LinuxNamespaceType::Network) && !crate::network::guest_configured()
        {
            return Err(format!(
                "{field}: sysctl {key:?} is not allowed in the guest's network namespace"
            ));
        }
        return Ok(());
    }
    if key == "kernel.hostname" || key == "kernel.domainname" {
        if !has_namespace(spec, LinuxNamespaceType::Uts) {
            return Err(format!(
                "{field}: sysctl {key:?} is not allowed in the guest's uts namespace"
            ));
        }
        return Ok(());
    }
    Err(format!(
        "{field}: sysctl {key:?} is not in a separate kernel namespace"
    ))
}

pub const PROPAGATIONS: [&str; 8] = [
    "private",
    "rprivate",
    "slave",
    "rslave",
    "shared",
    "rshared",
    "unbindable",
    "runbindable",
];

fn absolute(p: &Path, field: &str) -> Result<(), String> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(format!(
            "{field} must be an absolute path (got {:?})",
            p.display().to_string()
        ))
    }
}

/// Checks a process (a container's, or an exec's); errors name the field
/// as `process.<field>`.
pub fn validate_process(process: &Process) -> Result<(), String> {
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err("process.args must not be empty".into());
    }
    if process.command_line().is_some() {
        return Err("process.commandLine is Windows-only; use process.args".into());
    }
    absolute(process.cwd(), "process.cwd")?;
    for (i, e) in process.env().iter().flatten().enumerate() {
        if !e.contains('=') || e.starts_with('=') {
            return Err(format!("process.env[{i}]: {e:?} is not KEY=VALUE"));
        }
    }
    if let Some(l) = process.rlimits() {
        rlimits::validate(l)?;
    }
    if let Some(c) = process.capabilities() {
        caps::parse(c)?;
    }
    if let Some(adj) = process.oom_score_adj() {
        if !(-1000..=1000).contains(&adj) {
            return Err(format!(
                "process.oomScoreAdj {adj} out of range (-1000..1000)"
            ));
        }
    }
    if process.io_priority().is_some() {
        return Err("process.ioPriority: not supported".into());
    }
    if process.scheduler().is_some() {
        return Err("process.scheduler: not supported".into());
    }
    if process.exec_cpu_affinity().is_some() {
        return Err("process.execCPUAffinity: not supported".into());
    }
    // apparmorProfile / selinuxLabel: the guest kernel has no LSM for them;
    // ignored like runc does on a host without AppArmor/SELinux.
    Ok(())
}

/// Checks the spec; `Ok` means the agent knows how to run it.
pub fn validate(spec: &Spec) -> Result<(), String> {
    let root = spec.root().as_ref().ok_or("root: missing")?;
    absolute(root.path(), "root.path")?;

    let process = spec.process().as_ref().ok_or("process: missing")?;
    validate_process(process)?;

    let mut seen = HashSet::new();
    for (t, path) in namespaces(spec) {
        let name = ns_name(t);
        if !seen.insert(name) {
            return Err(format!("linux.namespaces: duplicate {name} namespace"));
        }
        match t {
            LinuxNamespaceType::User => {
                return Err("linux.namespaces: user namespaces are not supported (the VM is the isolation boundary)".into())
            }
            LinuxNamespaceType::Time => {
                return Err("linux.namespaces: time namespaces are not supported".into())
            }
            LinuxNamespaceType::Mount if path.is_some() => {
                return Err("linux.namespaces: joining an existing mount namespace is not supported".into())
            }
            _ => {}
        }
        if let Some(p) = path {
            absolute(Path::new(&p), &format!("linux.namespaces[{name}].path"))?;
        }
    }
    if !has_namespace(spec, LinuxNamespaceType::Mount) {
        return Err("linux.namespaces: a mount namespace is required".into());
    }
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty())
        && !has_namespace(spec, LinuxNamespaceType::Uts)
    {
        return Err("hostname: unable to set hostname without a private UTS namespace".into());
    }
    if spec.domainname().as_deref().is_some_and(|h| !h.is_empty())
        && !has_namespace(spec, LinuxNamespaceType::Uts)
    {
        return Err("domainname: unable to set domainname without a private UTS namespace".into());
    }

    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        absolute(m.destination(), &format!("mounts[{i}].destination"))?;
        if m.destination() == Path::new("/") {
            return Err(format!("mounts[{i}].destination: cannot mount over /"));
        }
        let opts = m.options().clone().unwrap_or_default();
        let bind =
            m.typ().as_deref() == Some("bind") || opts.iter().any(|o| o == "bind" || o == "rbind");
        if bind {
            let src = m
                .source()
                .as_ref()
                .ok_or(format!("mounts[{i}].source: missing for a bind mount"))?;
            absolute(src, &format!("mounts[{i}].source"))?;
        } else if m.typ().as_deref().unwrap_or("").is_empty() {
            return Err(format!("mounts[{i}].type: missing (and not a bind mount)"));
        }
        for o in &opts {
            if matches!(o.as_str(), "idmap" | "ridmap") || o.starts_with("X-mount.idmap") {
                return Err(format!(
                    "mounts[{i}].options: {o:?} (id-mapped mounts) is not supported"
                ));
            }
        }
    }

    if let Some(linux) = spec.linux() {
        if linux.uid_mappings().as_ref().is_some_and(|v| !v.is_empty())
            || linux.gid_mappings().as_ref().is_some_and(|v| !v.is_empty())
        {
            return Err("linux.uidMappings/gidMappings: user namespaces are not supported".into());
        }
        for (k, _) in linux.sysctl().iter().flatten() {
            validate_sysctl(spec, k)?;
        }
        if let Some(p) = linux
            .rootfs_propagation()
            .as_deref()
            .filter(|p| !p.is_empty())
        {
            if !PROPAGATIONS.contains(&p) {
                return Err(format!("linux.rootfsPropagation: invalid value {p:?}"));
            }
        }
        // Relative maskedPaths/readonlyPaths are taken from the container's
        // root, as runc does (mounts::in_root).
        for (i, d) in linux.devices().iter().flatten().enumerate() {
            absolute(d.path(), &format!("linux.devices[{i}].path"))?;
            if !d.path().starts_with("/dev/") {
                return Err(format!(
                    "linux.devices[{i}].path: {} is not under /dev",
                    d.path().display()
                ));
            }
        }
        if let Some(s) = linux.seccomp() {
            seccomp::compile(s)?;
        }
        if let Some(r) = linux.resources() {
            super::cgroups::resource_writes(r)?;
        }
        if linux.personality().is_some() {
            return Err("linux.personality: not supported".into());
        }
        if linux.intel_rdt().is_some() {
            return Err("linux.intelRdt: not supported".into());
        }
        if let Some(p) = linux.memory_policy() {
            super::mempolicy::parse(p)?;
        }
        if linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()) {
            return Err("linux.netDevices: not supported".into());
        }
        if linux.time_offsets().as_ref().is_some_and(|d| !d.is_empty()) {
            return Err("linux.timeOffsets: not supported (no time namespaces)".into());
        }
    } else {
        return Err("linux: missing (a mount namespace is required)".into());
    }
    // hooks run host-side (the runtime's business), annotations are opaque.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn base() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "root": { "path": "/run/husk/share/c1/rootfs" },
            "process": { "args": ["sh"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
            "linux": { "namespaces": [ { "type": "mount" }, { "type": "pid" } ] }
        })
    }

    fn check(v: Value) -> Result<(), String> {
        validate(&serde_json::from_value::<Spec>(v).unwrap())
    }

    fn with(f: impl FnOnce(&mut Value)) -> Result<(), String> {
        let mut v = base();
        f(&mut v);
        check(v)
    }

    #[test]
    fn minimal_is_valid() {
        check(base()).unwrap();
    }

    #[test]
    fn ids() {
        assert!(validate_id("abc-1_2.3+x").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("..").is_err());
        assert!(validate_id("a/b")
            .unwrap_err()
            .contains("invalid container id \"a/b\""));
    }

    #[test]
    fn messages() {
        let e = with(|v| v["root"]["path"] = json!("rootfs")).unwrap_err();
        assert_eq!(e, "root.path must be an absolute path (got \"rootfs\")");
        let e = with(|v| v["process"]["args"] = json!([])).unwrap_err();
        assert_eq!(e, "process.args must not be empty");
        let e = with(|v| v["process"]["cwd"] = json!("tmp")).unwrap_err();
        assert!(e.starts_with("process.cwd must be an absolute path"), "{e}");
        let e = with(|v| v["process"]["env"] = json!(["PATH=/bin", "oops"])).unwrap_err();
        assert_eq!(e, "process.env[1]: \"oops\" is not KEY=VALUE");
        let e =
            with(|v| v["linux"]["namespaces"] = json!([{ "type": "mount" }, { "type": "user" }]))
                .unwrap_err();
        assert!(
            e.starts_with("linux.namespaces: user namespaces are not supported"),
            "{e}"
        );
        let e = with(|v| v["linux"]["namespaces"] = json!([{ "type": "pid" }])).unwrap_err();
        assert_eq!(e, "linux.namespaces: a mount namespace is required");
        let e =
            with(|v| v["linux"]["namespaces"] = json!([{ "type": "mount" }, { "type": "mount" }]))
                .unwrap_err();
        assert_eq!(e, "linux.namespaces: duplicate mount namespace");
        let e = with(|v| v["hostname"] = json!("box")).unwrap_err();
        assert_eq!(
            e,
            "hostname: unable to set hostname without a private UTS namespace"
        );
        let e = with(|v| v["linux"]["sysctl"] = json!({ "net.ipv4.ip_forward": "1" })).unwrap_err();
        assert!(
            e.contains("not allowed in the guest's network namespace"),
            "{e}"
        );
        let e = with(|v| v["linux"]["sysctl"] = json!({ "vm.swappiness": "1" })).unwrap_err();
        assert!(e.contains("is not in a separate kernel namespace"), "{e}");
        let e = with(|v| {
            v["mounts"] = json!([{ "destination": "/data", "type": "bind", "source": "data" }])
        })
        .unwrap_err();
        assert_eq!(
            e,
            "mounts[0].source must be an absolute path (got \"data\")"
        );
        let e = with(|v| {
            v["process"]["rlimits"] = json!([{ "type": "RLIMIT_NOFILE", "soft": 10, "hard": 5 }])
        })
        .unwrap_err();
        assert!(e.starts_with("process.rlimits[0]: RLIMIT_NOFILE"), "{e}");
        let e =
            with(|v| v["linux"]["resources"] = json!({ "cpu": { "cpus": "1-0" } })).unwrap_err();
        assert!(e.starts_with("linux.resources.cpu.cpus"), "{e}");
        let e = with(|v| v["linux"]["seccomp"] = json!({ "defaultAction": "SCMP_ACT_NOTIFY" }))
            .unwrap_err();
        assert!(
            e.starts_with("linux.seccomp.defaultAction: SCMP_ACT_NOTIFY"),
            "{e}"
        );
        let e = with(|v| v["linux"]["rootfsPropagation"] = json!("weird")).unwrap_err();
        assert_eq!(e, "linux.rootfsPropagation: invalid value \"weird\"");
    }

    #[test]
    fn accepted_extras() {
        with(|v| {
            v["hostname"] = json!("box");
            v["linux"]["namespaces"] = json!([
                { "type": "mount" }, { "type": "uts" }, { "type": "ipc" }, { "type": "network" },
                { "type": "cgroup" }, { "type": "pid" }
            ]);
            v["linux"]["sysctl"] = json!({ "net.ipv4.ip_forward": "1", "kernel.shmmax": "1000" });
            v["linux"]["resources"] = json!({ "devices": [{ "allow": false, "access": "rwm" }] });
            v["process"]["apparmorProfile"] = json!("docker-default");
            v["mounts"] = json!([
                { "destination": "/proc", "type": "proc", "source": "proc" },
                { "destination": "/data", "source": "/run/husk/share/c1/mounts/0", "options": ["rbind", "ro"] },
                { "destination": "/rec", "source": "/run/husk/share/c1/mounts/1",
                  "options": ["rbind", "rro", "rrw", "rnosuid", "rsuid", "rnodev", "rdev", "rnoexec",
                              "rexec", "rnoatime", "ratime", "rdiratime", "rnodiratime", "rrelatime",
                              "rnorelatime", "rstrictatime", "rnostrictatime", "rnosymfollow",
                              "rsymfollow"] },
                { "destination": "/t", "type": "tmpfs", "source": "tmpfs", "options": ["rnoexec"] }
            ]);
            v["linux"]["maskedPaths"] = json!(["proc/kcore", "/proc/keys"]);
            v["linux"]["readonlyPaths"] = json!(["proc/sys"]);
        })
        .unwrap();
    }
}
