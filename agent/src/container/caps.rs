//! `process.capabilities` through the `caps` crate.

use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

/// The five sets, converted and checked.
#[derive(Debug, Clone, Default)]
pub struct CapSets {
    pub bounding: CapsHashSet,
    pub effective: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub permitted: CapsHashSet,
    pub ambient: CapsHashSet,
}

fn convert(set: &Option<Capabilities>, field: &str) -> Result<CapsHashSet, String> {
    let mut out = CapsHashSet::new();
    for c in set.iter().flatten() {
        // oci-spec serializes "CAP_CHOWN", the caps crate parses the same.
        let name = serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let cap = Capability::from_str(&name)
            .map_err(|_| format!("process.capabilities.{field}: unknown capability {name}"))?;
        out.insert(cap);
    }
    Ok(out)
}

pub fn parse(c: &LinuxCapabilities) -> Result<CapSets, String> {
    Ok(CapSets {
        bounding: convert(c.bounding(), "bounding")?,
        effective: convert(c.effective(), "effective")?,
        inheritable: convert(c.inheritable(), "inheritable")?,
        permitted: convert(c.permitted(), "permitted")?,
        ambient: convert(c.ambient(), "ambient")?,
    })
}

/// Drops every capability not in the bounding set (needs CAP_SETPCAP, so it
/// runs before the user switch). Capabilities this kernel does not know are
/// left alone.
pub fn drop_bounding(sets: &CapSets) -> Result<(), String> {
    for cap in caps::runtime::thread_all_supported() {
        if !sets.bounding.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| format!("drop {cap} from the bounding set: {e}"))?;
        }
    }
    Ok(())
}

/// Sets inheritable, permitted, effective and ambient, in an order the kernel
/// accepts whatever the current sets are (after a switch to a non-root user
/// with keep-caps the effective set is empty and the permitted one full).
pub fn apply(sets: &CapSets) -> Result<(), String> {
    let supported = caps::runtime::thread_all_supported();
    let only = |s: &CapsHashSet| -> CapsHashSet { s.intersection(&supported).copied().collect() };
    caps::clear(None, CapSet::Effective)
        .map_err(|e| format!("clear effective capabilities: {e}"))?;
    caps::set(None, CapSet::Inheritable, &only(&sets.inheritable))
        .map_err(|e| format!("set inheritable capabilities: {e}"))?;
    caps::set(None, CapSet::Permitted, &only(&sets.permitted))
        .map_err(|e| format!("set permitted capabilities: {e}"))?;
    caps::set(None, CapSet::Effective, &only(&sets.effective))
        .map_err(|e| format!("set effective capabilities (must be a subset of permitted): {e}"))?;
    // Ambient capabilities must be both permitted and inheritable; runc skips
    // the others rather than failing.
    let _ = caps::clear(None, CapSet::Ambient);
    for cap in only(&sets.ambient) {
        if sets.permitted.contains(&cap) && sets.inheritable.contains(&cap) {
            caps::raise(None, CapSet::Ambient, cap)
                .map_err(|e| format!("raise ambient capability {cap}: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion() {
        let c: LinuxCapabilities = serde_json::from_value(serde_json::json!({
            "bounding": ["CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN"],
            "effective": ["CAP_CHOWN"],
            "permitted": ["chown", "CAP_BPF"],
        }))
        .unwrap();
        let s = parse(&c).unwrap();
        assert_eq!(s.bounding.len(), 3);
        assert!(s.bounding.contains(&Capability::CAP_NET_BIND_SERVICE));
        assert!(s.effective.contains(&Capability::CAP_CHOWN));
        assert!(s.permitted.contains(&Capability::CAP_BPF));
        assert!(s.inheritable.is_empty());
        assert!(s.ambient.is_empty());
    }
}
