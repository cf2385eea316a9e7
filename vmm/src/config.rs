//! What a VM is made of, from the command line or a JSON file.

use std::path::PathBuf;

use serde::Deserialize;

/// Smallest guest the kernel and agent boot in (checked before anything is allocated).
pub const MIN_MEMORY_MIB: u32 = 32;
/// Largest guest we map (the e820 and MMIO layout are built for this).
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
/// vCPU count limit: 8-bit APIC ids in the MP table, and a sane upper bound.
pub const MAX_VCPUS: u8 = 64;
/// Guest CID of the only VM a husk-vmm runs (CIDs 0-2 are reserved).
pub const DEFAULT_GUEST_CID: u64 = 3;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    pub memory_mib: u32,
    pub vcpus: u8,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub console: Console,
    /// Host directories served to the guest over virtio-fs.
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// virtio-net devices, each backed by a tap fd the runtime passed in.
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// Appended to the built-in command line.
    #[serde(default)]
    pub cmdline_extra: String,
}

/// Most virtio-net devices one VM gets (each costs a thread and an IRQ).
pub const MAX_NET_DEVICES: usize = 8;
/// Smallest MTU the guest may be told (IPv4's minimum, RFC 791).
pub const MIN_MTU: u16 = 68;

/// One virtio-net device on a tap the runtime created and passed as an
/// inherited descriptor (`IFF_TAP|IFF_NO_PI|IFF_VNET_HDR`, 12-byte header).
/// The guest finds the NIC by `mac`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub tap_fd: i32,
    pub mac: [u8; 6],
    /// Offered to the guest (VIRTIO_NET_F_MTU) when set.
    #[serde(default)]
    pub mtu: Option<u16>,
}

impl NetConfig {
    /// `fd=N,mac=XX:XX:XX:XX:XX:XX[,mtu=M]`, as given to `--net`.
    pub fn parse(arg: &str) -> Result<NetConfig, ConfigError> {
        let bad = || ConfigError::Net(arg.to_string());
        let (mut fd, mut mac, mut mtu) = (None, None, None);
        for opt in arg.split(',') {
            let (k, v) = opt.split_once('=').ok_or_else(bad)?;
            match k {
                "fd" if fd.is_none() => fd = Some(v.parse::<i32>().map_err(|_| bad())?),
                "mac" if mac.is_none() => mac = Some(parse_mac(v).ok_or_else(bad)?),
                "mtu" if mtu.is_none() => {
                    let m = v.parse::<u32>().map_err(|_| bad())?;
                    mtu = Some(u16::try_from(m).map_err(|_| ConfigError::NetMtu(m))?);
                }
                _ => return Err(bad()),
            }
        }
        Ok(NetConfig {
            tap_fd: fd.ok_or_else(bad)?,
            mac: mac.ok_or_else(bad)?,
            mtu,
        })
    }
}

/// `XX:XX:XX:XX:XX:XX` (hex, either case).
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub uds_path: PathBuf,
    #[serde(default = "default_cid")]
    pub guest_cid: u64,
}

/// One virtio-fs device: the guest mounts `tag` (`mount -t virtiofs TAG ...`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    pub tag: String,
    pub shared_dir: PathBuf,
    /// `never`, `auto` (default) or `always`.
    #[serde(default)]
    pub cache: FsCache,
    #[serde(default)]
    pub xattr: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FsCache {
    Never,
    #[default]
    Auto,
    Always,
}

impl FsConfig {
    /// `TAG=DIR[,cache=never|auto|always][,xattr]`, as given to `--fs`.
    pub fn parse(arg: &str) -> Result<FsConfig, ConfigError> {
        let bad = || ConfigError::Fs(arg.to_string());
        let mut parts = arg.split(',');
        let (tag, dir) = parts
            .next()
            .and_then(|p| p.split_once('='))
            .ok_or_else(bad)?;
        if tag.is_empty() || dir.is_empty() {
            return Err(bad());
        }
        let mut cfg = FsConfig {
            tag: tag.to_string(),
            shared_dir: dir.into(),
            cache: FsCache::Auto,
            xattr: false,
        };
        for opt in parts {
            match opt {
                "cache=never" => cfg.cache = FsCache::Never,
                "cache=auto" => cfg.cache = FsCache::Auto,
                "cache=always" => cfg.cache = FsCache::Always,
                "xattr" => cfg.xattr = true,
                _ => return Err(bad()),
            }
        }
        Ok(cfg)
    }
}

fn default_cid() -> u64 {
    DEFAULT_GUEST_CID
}

/// Where the guest's serial console goes. Off by default: every byte the guest
/// prints is a VM exit.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Console {
    #[default]
    Off,
    Stdout,
    File(PathBuf),
}

impl Console {
    /// `-` means standard output, anything else a file path.
    pub fn parse(arg: &str) -> Console {
        match arg {
            "-" => Console::Stdout,
            path => Console::File(path.into()),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("--vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u8),
    #[error("--memory-mib must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB}, got {0}")]
    Memory(u32),
    #[error("vsock guest CID must be 3 or more, got {0}")]
    GuestCid(u64),
    #[error("--fs takes TAG=DIR[,cache=never|auto|always][,xattr], got {0:?}")]
    Fs(String),
    #[error("virtio-fs tag {0:?} must be 1 to 36 bytes and unique")]
    FsTag(String),
    #[error("--net takes fd=N,mac=XX:XX:XX:XX:XX:XX[,mtu=M], got {0:?}")]
    Net(String),
    #[error("net tap fd {0} must be 3 or more and given once")]
    NetFd(i32),
    #[error("net MAC {0} must be a unicast, non-zero address")]
    NetMac(String),
    #[error("net MTU must be between {MIN_MTU} and 65535, got {0}")]
    NetMtu(u32),
    #[error("at most {MAX_NET_DEVICES} net devices, got {0}")]
    NetCount(usize),
}

impl VmConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        for (i, f) in self.fs.iter().enumerate() {
            let dup = self.fs[..i].iter().any(|o| o.tag == f.tag);
            if f.tag.is_empty() || f.tag.len() > 36 || dup {
                return Err(ConfigError::FsTag(f.tag.clone()));
            }
        }
        if self.net.len() > MAX_NET_DEVICES {
            return Err(ConfigError::NetCount(self.net.len()));
        }
        for (i, n) in self.net.iter().enumerate() {
            if n.tap_fd < 3 || self.net[..i].iter().any(|o| o.tap_fd == n.tap_fd) {
                return Err(ConfigError::NetFd(n.tap_fd));
            }
            // Bit 0 of the first octet is the group (multicast) bit.
            if n.mac[0] & 1 != 0 || n.mac == [0; 6] {
                let m = n.mac.map(|b| format!("{b:02x}")).join(":");
                return Err(ConfigError::NetMac(m));
            }
            if let Some(mtu) = n.mtu.filter(|&m| m < MIN_MTU) {
                return Err(ConfigError::NetMtu(mtu.into()));
            }
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < 3 || v.guest_cid > u64::from(u32::MAX - 1) {
                return Err(ConfigError::GuestCid(v.guest_cid));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig {
            kernel: "k".into(),
            initrd: None,
            memory_mib: 128,
            vcpus: 1,
            vsock: None,
            console: Console::Off,
            fs: Vec::new(),
            net: Vec::new(),
            cmdline_extra: String::new(),
        }
    }

    #[test]
    fn net_args() {
        let n = NetConfig::parse("fd=5,mac=02:42:ac:11:00:0A,mtu=1500").unwrap();
        assert_eq!(
            n,
            NetConfig {
                tap_fd: 5,
                mac: [0x02, 0x42, 0xac, 0x11, 0, 0x0a],
                mtu: Some(1500),
            }
        );
        let n = NetConfig::parse("mac=02:00:00:00:00:01,fd=7").unwrap();
        assert_eq!((n.tap_fd, n.mtu), (7, None));
        for bad in [
            "",
            "fd=5",
            "mac=02:00:00:00:00:01",
            "fd=x,mac=02:00:00:00:00:01",
            "fd=5,mac=02:00:00:00:00",
            "fd=5,mac=02:00:00:00:00:01:02",
            "fd=5,mac=2:0:0:0:0:1",
            "fd=5,mac=02:00:00:00:00:zz",
            "fd=5,fd=6,mac=02:00:00:00:00:01",
            "fd=5,mac=02:00:00:00:00:01,bogus=1",
            "fd=5,mac=02:00:00:00:00:01,mtu",
        ] {
            assert!(NetConfig::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            NetConfig::parse("fd=5,mac=02:00:00:00:00:01,mtu=65536"),
            Err(ConfigError::NetMtu(65536))
        );
        let with = |net: Vec<NetConfig>| VmConfig { net, ..cfg() }.validate();
        let nic = |fd, mac, mtu| NetConfig {
            tap_fd: fd,
            mac,
            mtu,
        };
        let good = [2, 0, 0, 0, 0, 1];
        assert_eq!(with(vec![nic(3, good, Some(68))]), Ok(()));
        assert_eq!(with(vec![nic(2, good, None)]), Err(ConfigError::NetFd(2)));
        assert_eq!(
            with(vec![nic(4, good, None), nic(4, [2, 0, 0, 0, 0, 2], None)]),
            Err(ConfigError::NetFd(4))
        );
        assert!(matches!(
            with(vec![nic(4, [3, 0, 0, 0, 0, 1], None)]),
            Err(ConfigError::NetMac(_))
        ));
        assert!(matches!(
            with(vec![nic(4, [0; 6], None)]),
            Err(ConfigError::NetMac(_))
        ));
        assert_eq!(
            with(vec![nic(4, good, Some(67))]),
            Err(ConfigError::NetMtu(67))
        );
        let many = (0..9).map(|i| nic(3 + i, good, None)).collect();
        assert_eq!(with(many), Err(ConfigError::NetCount(9)));
    }

    #[test]
    fn limits() {
        assert_eq!(cfg().validate(), Ok(()));
        let c = VmConfig { vcpus: 0, ..cfg() };
        assert_eq!(c.validate(), Err(ConfigError::Vcpus(0)));
        let c = VmConfig {
            memory_mib: 8,
            ..cfg()
        };
        assert_eq!(c.validate(), Err(ConfigError::Memory(8)));
        let c = VmConfig {
            vsock: Some(VsockConfig {
                uds_path: "x".into(),
                guest_cid: 2,
            }),
            ..cfg()
        };
        assert_eq!(c.validate(), Err(ConfigError::GuestCid(2)));
    }

    #[test]
    fn fs_args() {
        assert_eq!(
            FsConfig::parse("husk=/run/x").unwrap(),
            FsConfig {
                tag: "husk".into(),
                shared_dir: "/run/x".into(),
                cache: FsCache::Auto,
                xattr: false,
            }
        );
        let f = FsConfig::parse("t=/d,cache=never,xattr").unwrap();
        assert_eq!((f.cache, f.xattr), (FsCache::Never, true));
        assert!(FsConfig::parse("t=/d,cache=sometimes").is_err());
        assert!(FsConfig::parse("husk").is_err());
        assert!(FsConfig::parse("=/x").is_err());
        let c = VmConfig {
            fs: vec![
                FsConfig::parse("a=/x").unwrap(),
                FsConfig::parse("a=/y").unwrap(),
            ],
            ..cfg()
        };
        assert_eq!(c.validate(), Err(ConfigError::FsTag("a".into())));
    }

    #[test]
    fn json_form() {
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","initrd":"/i","memory_mib":256,"vcpus":2,
                "vsock":{"uds_path":"/run/v.sock"},"console":{"file":"/tmp/c"}}"#,
        )
        .unwrap();
        assert_eq!(c.vsock.unwrap().guest_cid, 3);
        assert_eq!(c.console, Console::File("/tmp/c".into()));
        assert!(c.net.is_empty());
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","memory_mib":256,"vcpus":1,
                "net":[{"tap_fd":5,"mac":[2,0,0,0,0,1],"mtu":1500},{"tap_fd":6,"mac":[2,0,0,0,0,2]}]}"#,
        )
        .unwrap();
        assert_eq!(c.net.len(), 2);
        assert_eq!(c.net[0].mtu, Some(1500));
        assert_eq!(c.net[1].mtu, None);
        assert!(serde_json::from_str::<VmConfig>(
            r#"{"kernel":"/k","memory_mib":256,"vcpus":1,"net":[{"tap_fd":5,"mac":[2,0,0,0,0,1],"x":1}]}"#
        )
        .is_err());
        assert!(serde_json::from_str::<VmConfig>(
            r#"{"kernel":"/k","memory_mib":1,"vcpus":1,"bogus":1}"#
        )
        .is_err());
    }
}
