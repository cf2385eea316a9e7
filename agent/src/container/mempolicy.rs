//! `linux.memoryPolicy`: set_mempolicy(2) in the container's init just before
//! it execs, as runc's init does, so the process and what it forks inherit it.
//!
//! The guest kernel has NUMA with a single node (0; no SRAT without ACPI). A
//! policy that names only nodes the VM lacks fails at `create` with the
//! kernel's EINVAL, as runc's does on a host without those nodes.

use oci_spec::runtime::{LinuxMemoryPolicy, MemoryPolicyFlagType, MemoryPolicyModeType};

// uapi/linux/mempolicy.h
const MPOL_DEFAULT: i32 = 0;
const MPOL_PREFERRED: i32 = 1;
const MPOL_BIND: i32 = 2;
const MPOL_INTERLEAVE: i32 = 3;
const MPOL_LOCAL: i32 = 4;
const MPOL_PREFERRED_MANY: i32 = 5;
const MPOL_WEIGHTED_INTERLEAVE: i32 = 6;
const MPOL_F_NUMA_BALANCING: i32 = 1 << 13;
const MPOL_F_RELATIVE_NODES: i32 = 1 << 14;
const MPOL_F_STATIC_NODES: i32 = 1 << 15;

/// Node numbers accepted in `nodes` (a kernel's MAX_NUMNODES is at most 1024).
pub const MAX_NODE: usize = 1023;

const WORD_BITS: usize = libc::c_ulong::BITS as usize;

/// A checked policy, ready for set_mempolicy(2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemPolicy {
    /// Mode with its flags or'ed in.
    mode: i32,
    /// Node bitmask, one bit per node.
    mask: Vec<libc::c_ulong>,
}

fn field(msg: impl std::fmt::Display) -> String {
    format!("linux.memoryPolicy: {msg}")
}

/// Parses a nodes list ("0-3,5"): ranges and single nodes, comma separated.
fn parse_nodes(s: &str) -> Result<Vec<usize>, String> {
    let num = |t: &str| -> Result<usize, String> {
        let n: usize = t
            .trim()
            .parse()
            .map_err(|_| field(format!("nodes {s:?}: {t:?} is not a node number")))?;
        if n > MAX_NODE {
            return Err(field(format!("nodes {s:?}: node {n} is above {MAX_NODE}")));
        }
        Ok(n)
    };
    let mut nodes = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(field(format!("nodes {s:?}: range {part:?} is backwards")));
                }
                nodes.extend(a..=b);
            }
            None => nodes.push(num(part)?),
        }
    }
    Ok(nodes)
}

/// Checks a spec's policy (at `create`, before anything runs).
pub fn parse(p: &LinuxMemoryPolicy) -> Result<MemPolicy, String> {
    use MemoryPolicyModeType as M;
    let (mut mode, name, needs_nodes, takes_nodes) = match p.mode() {
        M::MpolDefault => (MPOL_DEFAULT, "MPOL_DEFAULT", false, false),
        M::MpolLocal => (MPOL_LOCAL, "MPOL_LOCAL", false, false),
        // An empty set means "local" for MPOL_PREFERRED.
        M::MpolPreferred => (MPOL_PREFERRED, "MPOL_PREFERRED", false, true),
        M::MpolBind => (MPOL_BIND, "MPOL_BIND", true, true),
        M::MpolInterleave => (MPOL_INTERLEAVE, "MPOL_INTERLEAVE", true, true),
        M::MpolWeightedInterleave => (
            MPOL_WEIGHTED_INTERLEAVE,
            "MPOL_WEIGHTED_INTERLEAVE",
            true,
            true,
        ),
        M::MpolPreferredMany => (MPOL_PREFERRED_MANY, "MPOL_PREFERRED_MANY", true, true),
    };
    let nodes = parse_nodes(p.nodes().as_deref().unwrap_or(""))?;
    if nodes.is_empty() && needs_nodes {
        return Err(field(format!("mode {name} needs nodes")));
    }
    if !nodes.is_empty() && !takes_nodes {
        return Err(field(format!("mode {name} takes no nodes")));
    }
    for f in p.flags().iter().flatten() {
        mode |= match f {
            MemoryPolicyFlagType::MpolFNumaBalancing => MPOL_F_NUMA_BALANCING,
            MemoryPolicyFlagType::MpolFRelativeNodes => MPOL_F_RELATIVE_NODES,
            MemoryPolicyFlagType::MpolFStaticNodes => MPOL_F_STATIC_NODES,
        };
    }
    let words = nodes.iter().max().map_or(0, |m| m / WORD_BITS + 1);
    let mut mask = vec![0; words];
    for n in nodes {
        mask[n / WORD_BITS] |= 1 << (n % WORD_BITS);
    }
    Ok(MemPolicy { mode, mask })
}

/// Sets the calling thread's policy (inherited over fork and execve).
pub fn apply(p: &MemPolicy) -> Result<(), String> {
    let (ptr, maxnode) = if p.mask.is_empty() {
        (std::ptr::null(), 0)
    } else {
        // The kernel reads maxnode - 1 bits.
        (p.mask.as_ptr(), p.mask.len() * WORD_BITS + 1)
    };
    // SAFETY: the mask outlives the call and holds maxnode - 1 bits.
    let r = unsafe { libc::syscall(libc::SYS_set_mempolicy, p.mode, ptr, maxnode) };
    if r != 0 {
        return Err(field(format!(
            "set_mempolicy: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Result<MemPolicy, String> {
        parse(&serde_json::from_str::<LinuxMemoryPolicy>(json).unwrap())
    }

    #[test]
    fn modes_nodes_and_flags() {
        let p = policy(r#"{"mode":"MPOL_BIND","nodes":"0-2,5","flags":["MPOL_F_STATIC_NODES"]}"#)
            .unwrap();
        assert_eq!(p.mode, MPOL_BIND | MPOL_F_STATIC_NODES);
        assert_eq!(p.mask, vec![0b10_0111]);
        let p = policy(r#"{"mode":"MPOL_INTERLEAVE","nodes":"64"}"#).unwrap();
        assert_eq!(p.mask, vec![0, 1]);
        let p = policy(r#"{"mode":"MPOL_DEFAULT"}"#).unwrap();
        assert_eq!((p.mode, p.mask.len()), (MPOL_DEFAULT, 0));
        let p = policy(r#"{"mode":"MPOL_PREFERRED"}"#).unwrap();
        assert_eq!(p.mode, MPOL_PREFERRED);
    }

    #[test]
    fn bad_policies_are_refused() {
        for (json, want) in [
            (r#"{"mode":"MPOL_BIND"}"#, "mode MPOL_BIND needs nodes"),
            (
                r#"{"mode":"MPOL_LOCAL","nodes":"0"}"#,
                "mode MPOL_LOCAL takes no nodes",
            ),
            (r#"{"mode":"MPOL_BIND","nodes":"3-1"}"#, "is backwards"),
            (
                r#"{"mode":"MPOL_BIND","nodes":"x"}"#,
                "is not a node number",
            ),
            (r#"{"mode":"MPOL_BIND","nodes":"1024"}"#, "is above 1023"),
            (
                r#"{"mode":"MPOL_BIND","nodes":"-1"}"#,
                "is not a node number",
            ),
        ] {
            let e = policy(json).unwrap_err();
            assert!(e.starts_with("linux.memoryPolicy: "), "{e}");
            assert!(e.contains(want), "{json}: {e}");
        }
    }
}
