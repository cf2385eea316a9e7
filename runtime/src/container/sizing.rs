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

pub fn vm_size(spec: &Spec, default: VmSize) -> Result<VmSize, SizingError> {
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
        .filter(|l| *l > 0)
        .map(|l| (l as u64).div_ceil(1 << 20) as u32 + MEMORY_OVERHEAD_MIB);
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

    #[test]
    fn bad_annotations() {
        let s = spec(r#"{"ociVersion":"1.0.2","annotations":{"io.husk.vm.vcpus":"lots"}}"#);
        assert!(matches!(vm_size(&s, D), Err(SizingError::Annotation(_, _))));
        let s = spec(r#"{"ociVersion":"1.0.2","annotations":{"io.husk.vm.vcpus":"0"}}"#);
        assert_eq!(vm_size(&s, D), Err(SizingError::Vcpus(0)));
    }
}
