//! list, spec, features.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use husk::container::Store;

use super::ListFormat;

pub fn list(store: &Store, format: ListFormat, quiet: bool) -> anyhow::Result<()> {
    let states: Vec<_> = store
        .list()
        .into_iter()
        .filter_map(|id| store.load(&id).ok())
        .collect();
    let mut out = std::io::stdout().lock();
    if quiet {
        for s in &states {
            writeln!(out, "{}", s.id)?;
        }
        return Ok(());
    }
    match format {
        ListFormat::Json => {
            let v: Vec<_> = states.iter().map(|s| s.oci()).collect();
            writeln!(out, "{}", serde_json::to_string(&v)?)?;
        }
        ListFormat::Table => {
            writeln!(
                out,
                "{:<12} {:<12} {:<12} {:<12} {:<32} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            )?;
            for s in &states {
                let o = s.oci();
                writeln!(
                    out,
                    "{:<12} {:<12} {:<12} {:<12} {:<32} {}",
                    o.id,
                    o.pid,
                    o.status,
                    o.bundle.display(),
                    o.created,
                    o.owner
                )?;
            }
        }
    }
    Ok(())
}

pub fn spec(bundle: &Path, rootless: bool) -> anyhow::Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!("File {} exists. Remove it first", path.display());
    }
    let spec = if rootless {
        oci_spec::runtime::Spec::rootless(1000, 1000)
    } else {
        oci_spec::runtime::Spec::default()
    };
    let text = serde_json::to_string_pretty(&spec)?;
    std::fs::write(&path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

pub fn features() -> anyhow::Result<()> {
    let v = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": husk::hooks::Kind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>(),
        // runc's option table as the agent applies it (tmpcopyup is not).
        "mountOptions": [
            "acl", "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec",
            "iversion", "lazytime", "loud", "mand", "noacl", "noatime", "nodev", "nodiratime",
            "noexec", "noiversion", "nolazytime", "nomand", "norelatime", "nostrictatime",
            "nosuid", "nosymfollow", "private", "ratime", "rbind", "rdev", "rdiratime",
            "relatime", "remount", "rexec", "rnoatime", "rnodev", "rnodiratime", "rnoexec",
            "rnorelatime", "rnostrictatime", "rnosuid", "rnosymfollow", "ro", "rprivate",
            "rrelatime", "rro", "rrw", "rshared", "rslave", "rstrictatime", "rsuid",
            "rsymfollow", "runbindable", "rw", "shared", "silent", "slave", "strictatime",
            "suid", "symfollow", "sync", "unbindable"
        ],
        "linux": {
            "namespaces": ["mount", "uts", "ipc", "pid", "network", "cgroup"],
            "capabilities": caps::all().into_iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": true, "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP", "SCMP_ACT_LOG"]},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.husk.isolation": "kvm-microvm",
            "io.husk.vm.memory_mib": "guest memory in MiB",
            "io.husk.vm.vcpus": "number of vCPUs"
        }
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
