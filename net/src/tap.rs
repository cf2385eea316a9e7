//! The tap device the VM's virtio-net is backed by.
//!
//! No crate fits (the research brief, section 4): `tun` lacks TUNSETVNETHDRSZ, vmm-sys-util has
//! no tap module. These are the three ioctls Firecracker and Cloud Hypervisor also hand-roll.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::NetError;

/// virtio-net header in front of every frame on the tap fd: `struct virtio_net_hdr_v1`, 12 bytes
/// (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers). Under VIRTIO_F_VERSION_1
/// the header always has num_buffers, mergeable rx buffers or not (virtio 1.x 5.1.6); the legacy
/// 10-byte header only applies to pre-1.0 drivers without MRG_RXBUF.
pub const VNET_HDR_LEN: usize = 12;

/// A tap in the container's netns, redirected to/from `link` by tc.
#[derive(Debug)]
pub struct Tap {
    /// The netns link this tap carries (`eth0`).
    pub link: String,
    /// The tap's own name in the netns (`hk0`).
    pub name: String,
    /// Non-blocking, close-on-exec, VNET_HDR with a 12-byte header. The tap is not persistent:
    /// it disappears with the last fd, so a VMM that dies leaves no device behind.
    pub fd: OwnedFd,
}

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags member of the union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates tap `name` in the calling thread's netns (the tun file is bound to the netns it is
/// opened in) and sets the vnet header size. Fails if a device with that name exists and is not a
/// free persistent tap; callers check the name is unused first.
pub(crate) fn create(name: &str) -> Result<OwnedFd, NetError> {
    let err = |source: io::Error| NetError::Tap {
        name: name.to_string(),
        source,
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(err(io::Error::from_raw_os_error(libc::EINVAL)));
    }
    let path = CString::new("/dev/net/tun").map_err(|e| err(io::Error::other(e)))?;
    // SAFETY: open(2) with a valid C string; the result is checked before use.
    let raw = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: raw is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        // No IFF_MULTI_QUEUE: one queue pair on virtio-mmio (research brief, step 3).
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads a struct ifreq, which IfReq matches in size and layout.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    let hdr_len: libc::c_int = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an int.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Our taps are `hk<n>`: the name tells `disconnect` which devices are ours.
pub(crate) fn name(index: usize) -> String {
    format!("hk{index}")
}

pub(crate) fn is_ours(name: &str) -> bool {
    name.strip_prefix("hk")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name(0), "hk0");
        assert!(is_ours("hk0") && is_ours("hk7"));
        assert!(!is_ours("hk") && !is_ours("hkx") && !is_ours("eth0") && !is_ours("hk0a"));
    }

    #[test]
    fn ifreq_is_ifreq_sized() {
        assert_eq!(
            std::mem::size_of::<IfReq>(),
            std::mem::size_of::<libc::ifreq>()
        );
    }
}
