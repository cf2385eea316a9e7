//! The guest's view of a container's cgroup, as containerd's cgroup v2
//! metrics (`ctr task metrics`, CRI stats).

use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{MessageField, MessageFull};
use husk_protocol::ContainerStats;

use crate::error::{Error, Result};

pub fn metrics(s: &ContainerStats) -> Metrics {
    let stat = |k: &str| s.memory_stat.get(k).copied().unwrap_or(0);
    let memory = MemoryStat {
        anon: stat("anon"),
        file: stat("file"),
        kernel_stack: stat("kernel_stack"),
        slab: stat("slab"),
        sock: stat("sock"),
        shmem: stat("shmem"),
        file_mapped: stat("file_mapped"),
        file_dirty: stat("file_dirty"),
        file_writeback: stat("file_writeback"),
        anon_thp: stat("anon_thp"),
        inactive_anon: stat("inactive_anon"),
        active_anon: stat("active_anon"),
        inactive_file: stat("inactive_file"),
        active_file: stat("active_file"),
        unevictable: stat("unevictable"),
        slab_reclaimable: stat("slab_reclaimable"),
        slab_unreclaimable: stat("slab_unreclaimable"),
        pgfault: stat("pgfault"),
        pgmajfault: stat("pgmajfault"),
        workingset_refault: stat("workingset_refault"),
        workingset_activate: stat("workingset_activate"),
        workingset_nodereclaim: stat("workingset_nodereclaim"),
        pgrefill: stat("pgrefill"),
        pgscan: stat("pgscan"),
        pgsteal: stat("pgsteal"),
        pgactivate: stat("pgactivate"),
        pgdeactivate: stat("pgdeactivate"),
        pglazyfree: stat("pglazyfree"),
        pglazyfreed: stat("pglazyfreed"),
        thp_fault_alloc: stat("thp_fault_alloc"),
        thp_collapse_alloc: stat("thp_collapse_alloc"),
        usage: s.memory_usage_bytes,
        // No limit of its own: the VM's memory is the limit.
        usage_limit: s.memory_limit_bytes.unwrap_or(s.guest_memory_total_bytes),
        swap_usage: s.swap_usage_bytes,
        ..Default::default()
    };
    Metrics {
        pids: MessageField::some(PidsStat {
            current: s.pids_current,
            limit: s.pids_limit.unwrap_or(0),
            ..Default::default()
        }),
        cpu: MessageField::some(CPUStat {
            usage_usec: s.cpu_usage_usec,
            user_usec: s.cpu_user_usec,
            system_usec: s.cpu_system_usec,
            ..Default::default()
        }),
        memory: MessageField::some(memory),
        memory_events: MessageField::some(MemoryEvents {
            oom: s.oom_events,
            oom_kill: s.oom_kills,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Packs a message the way containerd's typeurl expects: the type URL is the
/// message's full protobuf name (`io.containerd.cgroups.v2.Metrics`).
pub fn to_any<M: MessageFull>(m: &M) -> Result<Any> {
    let value = m
        .write_to_bytes()
        .map_err(|e| Error::internal("cannot encode metrics", e))?;
    Ok(Any {
        type_url: M::descriptor().full_name().to_string(),
        value,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_any() {
        let mut s = ContainerStats {
            cpu_usage_usec: 5,
            memory_usage_bytes: 1 << 20,
            guest_memory_total_bytes: 128 << 20,
            pids_current: 2,
            oom_kills: 1,
            ..Default::default()
        };
        s.memory_stat.insert("anon".into(), 4096);
        let m = metrics(&s);
        assert_eq!(m.memory.usage_limit, 128 << 20);
        assert_eq!(m.memory.anon, 4096);
        assert_eq!(m.memory_events.oom_kill, 1);
        let any = to_any(&m).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        assert!(!any.value.is_empty());
    }
}
