//! How big a VM a container gets.
//!
//! Precedence: annotations `io.husk.vm.memory_mib` / `io.husk.vm.vcpus`, then
//! `linux.resources` (memory limit + [`MEMORY_OVERHEAD_MIB`] for the guest
//! kernel and agent; CPU quota/period rounded up to whole vCPUs), then the
//! host defaults from config.toml.

use oci_spec::runtime::Spec;

pub const ANNOTATION_MEMORY: &str = "io.husk.vm.memory_mib";
pub const ANNOTATION_VCPUS: &str = "io.husk.vm.vcpus";
/// Guest kernel, page tables, agent and page cache headroom on top of the
/// container's own memory limit.
pub const MEMORY_OVERHEAD_MIB: u32 = 64;
pub const MIN_MEMORY_MIB: u32 = 64;
pub const MAX_VCPUS: u8 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub memory_mib: u32,
    pub vcpus: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizingError {
    #[error("annotation {0}: {1:?} is not a valid number")]
    Annotation(&'static str, String),
    #[error("annotation {ANNOTATION_VCPUS}: {0} is outside 1..={MAX_VCPUS}")]
    Vcpus(u64),
}

/// Memory limits at or above this are "unlimited" sentinels, not sizes:
/// `i64::MAX` and its page-rounded form (what cgroup v1 reports for no
/// limit, and what some tools copy into specs). They get the default size.
const UNLIMITED_BYTES: i64 = 1 << 62;

pub fn vm_size(spec: &Spec, default: VmSize) -> Result<VmSize, SizingError> {
    vm_size_on(spec, default, host_memory_mib())
}

/// The host's RAM in MiB (MemTotal), if it can be read.
fn host_memory_mib() -> Option<u32> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(u32::try_from(kib >> 10).unwrap_or(u32::MAX))
}

/// Guest MiB for a `linux.resources.memory.limit`: None for no limit (≤ 0
/// as runc reads -1, or an unlimited sentinel); a limit the host cannot
/// give is capped at the host's RAM (runc would set it and the container
/// would simply never reach it).
pub(crate) fn memory_for_limit(limit: i64, host_mib: Option<u32>) -> Option<u32> {
    if limit <= 0 || limit >= UNLIMITED_BYTES {
        return None;
    }
    let mib = u64::try_from(limit).ok()?.div_ceil(1 << 20);
    let mib = mib.saturating_add(u64::from(MEMORY_OVERHEAD_MIB));
    let cap = u64::from(host_mib.unwrap_or(u32::MAX));
    Some(u32::try_from(mib.min(cap)).unwrap_or(u32::MAX))
}

fn vm_size_on(spec: &Spec, default: VmSize, host_mib: Option<u32>) -> Result<VmSize, SizingError> {
    let ann = spec.annotations().as_ref();
    let get = |key: &'static str| -> Result<Option<u64>, SizingError> {
        match ann.and_then(|a| a.get(key)) {
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| SizingError::Annotation(key, v.clone())),
            None => Ok(None),
        }
    };
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let mem_limit = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .and_then(|l| memory_for_limit(l, host_mib));
    let cpu_vcpus =
        resources
            .and_then(|r| r.cpu().as_ref())
            .and_then(|c| match (c.quota(), c.period()) {
                (Some(q), Some(p)) if q > 0 && p > 0 => {
                    Some((q as u64).div_ceil(p).min(MAX_VCPUS as u64) as u8)
                }
                _ => None,
            });

    let memory_mib = match get(ANNOTATION_MEMORY)? {
        Some(m) => u32::try_from(m)
            .map_err(|_| SizingError::Annotation(ANNOTATION_MEMORY, m.to_string()))?,
        None => mem_limit.unwrap_or(default.memory_mib),
    }
    .max(MIN_MEMORY_MIB);
    let vcpus = match get(ANNOTATION_VCPUS)? {
        Some(v) if (1..=MAX_VCPUS as u64).contains(&v) => v as u8,
        Some(v) => return Err(SizingError::Vcpus(v)),
        None => cpu_vcpus.unwrap_or(default.vcpus),
    };
    Ok(VmSize { memory_mib, vcpus })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: VmSize = VmSize {
        memory_mib: 256,
        vcpus: 1,
    };

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_resources_annotations() {
        assert_eq!(vm_size(&spec(r#"{"ociVersion":"1.0.2"}"#), D).unwrap(), D);
        let s = spec(
            r#"{"ociVersion":"1.0.2","linux":{"resources":{"memory":{"limit":536870912},
                "cpu":{"quota":150000,"period":100000}}}}"#,
        );
        assert_eq!(
            vm_size(&s, D).unwrap(),
            VmSize {
                memory_mib: 512 + MEMORY_OVERHEAD_MIB,
                vcpus: 2
            }
        );
        let s = spec(
            r#"{"ociVersion":"1.0.2","annotations":{"io.husk.vm.memory_mib":"1024","io.husk.vm.vcpus":"4"},
                "linux":{"resources":{"memory":{"limit":536870912}}}}"#,
        );
        assert_eq!(
            vm_size(&s, D).unwrap(),
            VmSize {
                memory_mib: 1024,
                vcpus: 4
            }
        );
    }

    fn limit(l: i64) -> Spec {
        spec(&format!(
            r#"{{"ociVersion":"1.0.2","linux":{{"resources":{{"memory":{{"limit":{l}}}}}}}}}"#
        ))
    }

    #[test]
    fn huge_and_sentinel_memory_limits() {
        let host = Some(16 * 1024);
        // Unlimited sentinels: the default size, not a 64 MiB VM.
        for l in [i64::MAX, 0x7FFF_FFFF_FFFF_F000, -1, 0] {
            assert_eq!(vm_size_on(&limit(l), D, host).unwrap(), D, "{l:#x}");
        }
        // Beyond u32 MiB (overflowed before): capped at the host's RAM.
        let big = 0xffff_ffff_i64 << 20;
        assert_eq!(
            vm_size_on(&limit(big), D, host).unwrap().memory_mib,
            16 * 1024
        );
        assert_eq!(
            vm_size_on(&limit(big), D, None).unwrap().memory_mib,
            u32::MAX
        );
        assert_eq!(
            vm_size_on(&limit(1 << 40), D, host).unwrap().memory_mib,
            16 * 1024
        );
        // Within what the host has: as asked.
        assert_eq!(
            vm_size_on(&limit(1 << 30), D, host).unwrap().memory_mib,
            1024 + MEMORY_OVERHEAD_MIB
        );
        assert!(vm_size(&limit(i64::MAX), D).unwrap().memory_mib >= D.memory_mib);
    }

    #[test]
    fn bad_annotations() {
        let s = spec(r#"{"ociVersion":"1.0.2","annotations":{"io.husk.vm.vcpus":"lots"}}"#);
        assert!(matches!(vm_size(&s, D), Err(SizingError::Annotation(_, _))));
        let s = spec(r#"{"ociVersion":"1.0.2","annotations":{"io.husk.vm.vcpus":"0"}}"#);
        assert_eq!(vm_size(&s, D), Err(SizingError::Vcpus(0)));
    }
}
