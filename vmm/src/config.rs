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
    /// Appended to the built-in command line.
    #[serde(default)]
    pub cmdline_extra: String,
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
            cmdline_extra: String::new(),
        }
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
        assert!(serde_json::from_str::<VmConfig>(
            r#"{"kernel":"/k","memory_mib":1,"vcpus":1,"bogus":1}"#
        )
        .is_err());
    }
}
