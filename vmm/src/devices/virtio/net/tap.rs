//! The tap descriptor the runtime hands in. It was created in the
//! container's netns (`IFF_TAP|IFF_NO_PI|IFF_VNET_HDR`, 12-byte vnet header,
//! non-blocking); a tap fd works from any netns, so the VMM's own (empty)
//! netns does not matter. Everything here but [`Tap::set_offload`],
//! `readv` and `writev` runs before the jail.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::header::VNET_HDR_LEN;
use super::NetError;

/// `struct ifreq` as TUNGETIFF writes it: the name and the flags member of the union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A checked tap descriptor, owned by the device.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
}

impl Tap {
    /// Takes ownership of inherited descriptor `fd` after checking that it
    /// is an attached tap with IFF_VNET_HDR and IFF_NO_PI; sets the vnet
    /// header size to 12 (if the runtime did not) and O_NONBLOCK.
    ///
    /// Call before opening anything else: a number the runtime did not pass
    /// would otherwise name one of our own files.
    pub fn from_inherited(fd: RawFd) -> Result<Tap, NetError> {
        // SAFETY: F_GETFD takes no pointer; it only tells whether fd is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(NetError::NotOpen {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF writes a struct ifreq, which IfReq matches in
        // size and layout; on other file types it fails without writing.
        if unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) } < 0 {
            return Err(NetError::NotTun {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        let flags = req.flags as u16 as u32;
        let want = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as u32;
        if flags & want != want || flags & libc::IFF_TUN as u32 != 0 {
            return Err(NetError::WrongFlags { fd, flags });
        }
        let setup = |what, r: libc::c_int| {
            if r < 0 {
                Err(NetError::Setup {
                    fd,
                    what,
                    source: io::Error::last_os_error(),
                })
            } else {
                Ok(r)
            }
        };
        let mut size: libc::c_int = 0;
        // SAFETY: TUNGETVNETHDRSZ writes an int.
        setup("TUNGETVNETHDRSZ", unsafe {
            libc::ioctl(fd, libc::TUNGETVNETHDRSZ, &mut size)
        })?;
        if size != VNET_HDR_LEN as libc::c_int {
            let size = VNET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads an int.
            setup("TUNSETVNETHDRSZ", unsafe {
                libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &size)
            })?;
        }
        // SAFETY: fcntl with integer arguments.
        let fl = setup("F_GETFL", unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
        if fl & libc::O_NONBLOCK == 0 {
            // SAFETY: as above.
            setup("F_SETFL", unsafe {
                libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK)
            })?;
        }
        // SAFETY: fd is open and was handed to us by --net (validated to be
        // named once); nothing else in the process owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Tap { fd })
    }

    /// A non-blocking datagram descriptor standing in for a tap (tests: a
    /// socketpair end, which can be filled until writes get EAGAIN).
    #[cfg(test)]
    pub(crate) fn from_fd_unchecked(fd: OwnedFd) -> Tap {
        Tap { fd }
    }

    /// TUNSETOFFLOAD: which offloaded frames (partial checksums, TSO) the
    /// tap may hand us, i.e. what the guest acked it can take.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One frame (vnet header first) into `iov`. Returns the frame's full
    /// length, which is more than `iov` holds if the tap truncated it.
    pub fn readv(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        let n =
            libc::c_int::try_from(iov.len()).map_err(|_| io::Error::other("too many iovecs"))?;
        // SAFETY: every iovec points into guest memory (mapped for the VM's
        // lifetime, which the device's memory handle outlives) and is as
        // long as the slice it was made from.
        let r = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), n) };
        usize::try_from(r).map_err(|_| io::Error::last_os_error())
    }

    /// One frame (vnet header first) from `iov`.
    pub fn writev(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        let n =
            libc::c_int::try_from(iov.len()).map_err(|_| io::Error::other("too many iovecs"))?;
        // SAFETY: as for readv; the kernel only reads.
        let r = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), n) };
        usize::try_from(r).map_err(|_| io::Error::last_os_error())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ifreq_is_ifreq_sized() {
        assert_eq!(
            std::mem::size_of::<super::IfReq>(),
            std::mem::size_of::<libc::ifreq>()
        );
    }
}
