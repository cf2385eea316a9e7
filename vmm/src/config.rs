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
}

impl VmConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
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
