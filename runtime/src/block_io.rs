//! The spec's `linux.resources.blockIO`, for the sandbox cgroup on the host.
//!
//! A VM's block I/O on the host is husk-vmm's: virtio-fs is served in
//! process, on the host's files, so the cgroup that holds husk-vmm is where
//! a weight or a throttle takes effect. The guest has no block devices of
//! its own and no io controller, and never gets blockIO
//! ([`crate::cgroups::for_guest`]).
//!
//! What runc does (libcontainer/cgroups/fs2/io.go and fs/blkio.go) is the
//! model: a weight of 0 and a rate of 0 are "not set" (Docker writes a
//! blockIO section with nothing in it for every container); leaf weights
//! are CFQ's, a scheduler gone since Linux 5.0, and are not taken.

use oci_spec::runtime::{LinuxBlockIo, LinuxThrottleDevice};

/// A block device's `major:minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    pub major: i64,
    pub minor: i64,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One device's throttles: bytes and I/Os per second, read and write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Throttle {
    pub rbps: Option<u64>,
    pub wbps: Option<u64>,
    pub riops: Option<u64>,
    pub wiops: Option<u64>,
}

/// The blockIO settings that ask for something.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockIo {
    /// On the blkio scale (v1, BFQ): 10–1000.
    pub weight: Option<u16>,
    pub weight_devices: Vec<(Device, u16)>,
    /// Per device, in the order the spec first names it.
    pub throttles: Vec<(Device, Throttle)>,
}

/// v1 files for each kind of throttle, and the v2 `io.max` key.
const KINDS: [(&str, &str); 4] = [
    ("rbps", "blkio.throttle.read_bps_device"),
    ("wbps", "blkio.throttle.write_bps_device"),
    ("riops", "blkio.throttle.read_iops_device"),
    ("wiops", "blkio.throttle.write_iops_device"),
];

impl Throttle {
    fn get(&self, key: &str) -> Option<u64> {
        match key {
            "rbps" => self.rbps,
            "wbps" => self.wbps,
            "riops" => self.riops,
            _ => self.wiops,
        }
    }

    fn set(&mut self, key: &str, v: u64) {
        let slot = match key {
            "rbps" => &mut self.rbps,
            "wbps" => &mut self.wbps,
            "riops" => &mut self.riops,
            _ => &mut self.wiops,
        };
        *slot = Some(v);
    }
}

impl BlockIo {
    /// None: nothing is asked (no section, or Docker's empty or all-zero one).
    pub fn from_spec(b: &LinuxBlockIo) -> Option<BlockIo> {
        let mut out = BlockIo {
            weight: b.weight().filter(|w| *w > 0),
            ..Default::default()
        };
        for d in b.weight_device().iter().flatten() {
            if let Some(w) = d.weight().filter(|w| *w > 0) {
                let dev = Device {
                    major: d.major(),
                    minor: d.minor(),
                };
                out.weight_devices.push((dev, w));
            }
        }
        let lists = [
            b.throttle_read_bps_device(),
            b.throttle_write_bps_device(),
            b.throttle_read_iops_device(),
            b.throttle_write_iops_device(),
        ];
        for ((key, _), list) in KINDS.iter().zip(lists) {
            let list: &[LinuxThrottleDevice] = list.as_deref().unwrap_or_default();
            // A rate of 0 is "not set", as in runc's fs2 (the kernel's io.max
            // refuses 0 anyway).
            for t in list.iter().filter(|t| t.rate() > 0) {
                let dev = Device {
                    major: t.major(),
                    minor: t.minor(),
                };
                match out.throttles.iter_mut().find(|(d, _)| *d == dev) {
                    Some((_, th)) => th.set(key, t.rate()),
                    None => {
                        let mut th = Throttle::default();
                        th.set(key, t.rate());
                        out.throttles.push((dev, th));
                    }
                }
            }
        }
        let empty =
            out.weight.is_none() && out.weight_devices.is_empty() && out.throttles.is_empty();
        (!empty).then_some(out)
    }

    /// The v2 `io.max` lines, one per device (`MAJ:MIN rbps=N wbps=N ...`,
    /// only the keys the spec sets: the others keep their values).
    pub fn io_max_lines(&self) -> Vec<String> {
        self.throttles
            .iter()
            .map(|(dev, th)| {
                let mut line = dev.to_string();
                for (key, _) in KINDS {
                    if let Some(v) = th.get(key) {
                        line.push_str(&format!(" {key}={v}"));
                    }
                }
                line
            })
            .collect()
    }

    /// The v1 throttle writes (file, `MAJ:MIN N`), one per device and kind.
    pub fn v1_throttles(&self, dev: Device, th: &Throttle) -> Vec<(&'static str, String)> {
        KINDS
            .iter()
            .filter_map(|(key, file)| th.get(key).map(|v| (*file, format!("{dev} {v}"))))
            .collect()
    }
}

/// A blkio weight (10–1000: v1, BFQ) on cgroup v2's `io.weight` scale
/// (1–10000), runc's conversion (ConvertBlkIOToIOWeightValue in
/// libcontainer/cgroups/utils.go, used by fs2/io.go when there is no
/// `io.bfq.weight`): `1 + (weight - 10) * 9999 / 990`, so 10 → 1,
/// 500 → 4950, 1000 → 10000. 0 stays 0 ("not set"); below 10 (the OCI
/// spec's minimum) counts as 10 where runc's unsigned arithmetic would wrap.
pub fn io_weight(blkio_weight: u16) -> u64 {
    if blkio_weight == 0 {
        return 0;
    }
    1 + (u64::from(blkio_weight).max(10) - 10) * 9999 / 990
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Option<BlockIo> {
        BlockIo::from_spec(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn weight_conversion_is_runcs() {
        for (w, want) in [
            (0, 0),
            (10, 1),
            (100, 910),
            (500, 4950),
            (1000, 10000),
            (1, 1),
        ] {
            assert_eq!(io_weight(w), want, "{w}");
        }
        let mut last = 0;
        for w in 10..=1000 {
            let v = io_weight(w);
            assert!(v > last && v <= 10000, "{w} -> {v}");
            last = v;
        }
    }

    #[test]
    fn dockers_empty_blockio_asks_for_nothing() {
        for v in [
            serde_json::json!({}),
            serde_json::json!({"weight": 0}),
            serde_json::json!({"weight": 0, "leafWeight": 0, "weightDevice": [],
                "throttleReadBpsDevice": [], "throttleWriteBpsDevice": null,
                "throttleReadIOPSDevice": [], "throttleWriteIOPSDevice": []}),
            serde_json::json!({"weightDevice": [{"major": 8, "minor": 0, "weight": 0}],
                "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 0}]}),
            // Leaf weights are CFQ's.
            serde_json::json!({"leafWeight": 300}),
        ] {
            assert_eq!(parse(v.clone()), None, "{v}");
        }
    }

    #[test]
    fn io_max_lines_group_by_device() {
        let b = parse(serde_json::json!({
            "weight": 500,
            "weightDevice": [{"major": 8, "minor": 16, "weight": 200}],
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
            "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 2097152},
                                       {"major": 253, "minor": 1, "rate": 0}],
            "throttleReadIOPSDevice": [{"major": 253, "minor": 1, "rate": 100}],
            "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 50}]
        }))
        .unwrap();
        assert_eq!(b.weight, Some(500));
        assert_eq!(
            b.weight_devices,
            [(
                Device {
                    major: 8,
                    minor: 16
                },
                200
            )]
        );
        assert_eq!(
            b.io_max_lines(),
            ["8:0 rbps=1048576 wbps=2097152 wiops=50", "253:1 riops=100"]
        );
        let (dev, th) = b.throttles[0];
        assert_eq!(
            b.v1_throttles(dev, &th),
            [
                ("blkio.throttle.read_bps_device", "8:0 1048576".to_string()),
                ("blkio.throttle.write_bps_device", "8:0 2097152".to_string()),
                ("blkio.throttle.write_iops_device", "8:0 50".to_string()),
            ]
        );
    }
}
