//! Host-wide defaults from `/etc/husk/config.toml`.
//!
//! ```toml
//! kernel = "/usr/local/share/husk/vmlinux"
//! initrd = "/usr/local/share/husk/initrd.img"
//! vmm = "/usr/local/bin/husk-vmm"
//! memory_mib = 256
//! vcpus = 1
//! # Debugging only: run husk-vmm without its jail (loudly logged by husk-vmm).
//! no_jail = false
//! ```
//! Every key is optional; built-in defaults point at `make install`'s layout
//! next to the `husk` binary (`../share/husk/`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/husk/config.toml";
pub const DEFAULT_MEMORY_MIB: u32 = 256;
pub const DEFAULT_VCPUS: u8 = 1;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HuskConfig {
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub vmm: Option<PathBuf>,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Start husk-vmm with `--no-jail`. Off by default; never in production.
    #[serde(default)]
    pub no_jail: bool,
}

fn default_memory() -> u32 {
    DEFAULT_MEMORY_MIB
}
fn default_vcpus() -> u8 {
    DEFAULT_VCPUS
}

impl Default for HuskConfig {
    fn default() -> Self {
        HuskConfig {
            kernel: None,
            initrd: None,
            vmm: None,
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: DEFAULT_VCPUS,
            no_jail: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("invalid {0}: {1}")]
    Parse(PathBuf, toml::de::Error),
}

/// Paths resolved against the defaults.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vmm: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub no_jail: bool,
}

impl HuskConfig {
    /// Reads `path`; a missing file means all defaults. `HUSK_CONFIG` overrides the path.
    pub fn load(path: &Path) -> Result<HuskConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HuskConfig::default()),
            Err(e) => Err(ConfigError::Read(path.into(), e)),
        }
    }

    /// Fills unset paths from the install layout around `exe` (`<prefix>/bin/husk`):
    /// `<prefix>/bin/husk-vmm`, `<prefix>/share/husk/{vmlinux,initrd.img}`.
    pub fn resolve(&self, exe: &Path) -> Resolved {
        let bin = exe.parent().unwrap_or(Path::new("/usr/local/bin"));
        let share = bin
            .parent()
            .unwrap_or(Path::new("/usr/local"))
            .join("share/husk");
        Resolved {
            kernel: self.kernel.clone().unwrap_or_else(|| share.join("vmlinux")),
            initrd: self
                .initrd
                .clone()
                .unwrap_or_else(|| share.join("initrd.img")),
            vmm: self.vmm.clone().unwrap_or_else(|| bin.join("husk-vmm")),
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            no_jail: self.no_jail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_defaults() {
        let c: HuskConfig = toml::from_str("memory_mib = 512\nkernel = \"/k\"").unwrap();
        assert_eq!(c.memory_mib, 512);
        assert_eq!(c.vcpus, 1);
        assert!(!c.no_jail, "jailed unless asked");
        let r = c.resolve(Path::new("/opt/husk/bin/husk"));
        assert_eq!(r.kernel, PathBuf::from("/k"));
        assert_eq!(r.initrd, PathBuf::from("/opt/husk/share/husk/initrd.img"));
        assert_eq!(r.vmm, PathBuf::from("/opt/husk/bin/husk-vmm"));
        assert!(toml::from_str::<HuskConfig>("bogus = 1").is_err());
    }

    #[test]
    fn missing_file_is_defaults() {
        let c = HuskConfig::load(Path::new("/nonexistent/husk.toml")).unwrap();
        assert_eq!(c, HuskConfig::default());
    }
}
