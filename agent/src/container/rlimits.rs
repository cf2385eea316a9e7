//! `process.rlimits` → setrlimit(2).

use oci_spec::runtime::{PosixRlimit, PosixRlimitType};

/// The kernel resource number for an OCI rlimit type.
pub fn resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType::*;
    match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// The OCI name of a type ("RLIMIT_NOFILE").
pub fn name(t: PosixRlimitType) -> String {
    t.to_string()
}

/// Checks soft ≤ hard and that no type appears twice.
pub fn validate(limits: &[PosixRlimit]) -> Result<(), String> {
    let mut seen = Vec::new();
    for (i, l) in limits.iter().enumerate() {
        if l.soft() > l.hard() {
            return Err(format!(
                "process.rlimits[{i}]: {} soft limit {} exceeds hard limit {}",
                name(l.typ()),
                l.soft(),
                l.hard()
            ));
        }
        if seen.contains(&l.typ()) {
            return Err(format!("process.rlimits[{i}]: duplicate {}", name(l.typ())));
        }
        seen.push(l.typ());
    }
    Ok(())
}

/// Applies the limits to the calling process (inherited across execve).
pub fn apply(limits: &[PosixRlimit]) -> Result<(), String> {
    for l in limits {
        let r = libc::rlimit {
            rlim_cur: l.soft(),
            rlim_max: l.hard(),
        };
        // SAFETY: plain syscall on a valid struct.
        if unsafe { libc::setrlimit(resource(l.typ()), &r) } != 0 {
            return Err(format!(
                "setrlimit {} (soft {}, hard {}): {}",
                name(l.typ()),
                l.soft(),
                l.hard(),
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(t: &str, soft: u64, hard: u64) -> PosixRlimit {
        serde_json::from_value(serde_json::json!({ "type": t, "soft": soft, "hard": hard }))
            .unwrap()
    }

    #[test]
    fn mapping() {
        use PosixRlimitType::*;
        assert_eq!(resource(RlimitNofile), libc::RLIMIT_NOFILE);
        assert_eq!(resource(RlimitNproc), libc::RLIMIT_NPROC);
        assert_eq!(resource(RlimitCore), libc::RLIMIT_CORE);
        assert_eq!(resource(RlimitRttime), libc::RLIMIT_RTTIME);
        assert_eq!(resource(RlimitAs), libc::RLIMIT_AS);
        assert_eq!(name(RlimitNofile), "RLIMIT_NOFILE");
        assert_eq!(lim("RLIMIT_MSGQUEUE", 1, 2).typ(), RlimitMsgqueue);
    }

    #[test]
    fn validation() {
        assert!(validate(&[lim("RLIMIT_NOFILE", 1024, 4096), lim("RLIMIT_CORE", 0, 0)]).is_ok());
        assert_eq!(
            validate(&[lim("RLIMIT_NOFILE", 4096, 1024)]).unwrap_err(),
            "process.rlimits[0]: RLIMIT_NOFILE soft limit 4096 exceeds hard limit 1024"
        );
        assert_eq!(
            validate(&[lim("RLIMIT_CORE", 0, 0), lim("RLIMIT_CORE", 1, 1)]).unwrap_err(),
            "process.rlimits[1]: duplicate RLIMIT_CORE"
        );
    }
}
