//! The sandbox cgroup's device policy: deny every device but the few
//! character devices the monitor and husk-vmm open after joining it
//! (husk-vmm opens `/dev/kvm` only then). A compromised VMM (its fs worker
//! has CAP_MKNOD) then cannot open a block device node or `/dev/mem` it
//! made or found, whatever file system it is on.
//!
//! cgroup v1: `devices.deny a`, then `devices.allow` per device. cgroup v2
//! has no devices controller: a `BPF_PROG_TYPE_CGROUP_DEVICE` program
//! attached to the cgroup decides. None of our dependencies loads one
//! (seccompiler is classic BPF for seccomp, nix and libc have no bpf(2)
//! wrapper), so the program is assembled here, a dozen instructions, and
//! loaded with the raw syscall.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// A character device the sandbox may read and write (`None`: any minor).
pub struct Allowed {
    pub major: u32,
    pub minor: Option<u32>,
    pub what: &'static str,
}

/// Everything the monitor and husk-vmm need; no block devices, no mknod.
pub const ALLOWED: &[Allowed] = &[
    Allowed {
        major: 1,
        minor: Some(3),
        what: "/dev/null",
    },
    Allowed {
        major: 1,
        minor: Some(5),
        what: "/dev/zero",
    },
    Allowed {
        major: 1,
        minor: Some(7),
        what: "/dev/full",
    },
    Allowed {
        major: 1,
        minor: Some(8),
        what: "/dev/random",
    },
    Allowed {
        major: 1,
        minor: Some(9),
        what: "/dev/urandom",
    },
    Allowed {
        major: 5,
        minor: Some(0),
        what: "/dev/tty",
    },
    Allowed {
        major: 5,
        minor: Some(2),
        what: "/dev/ptmx",
    },
    Allowed {
        major: 136,
        minor: None,
        what: "/dev/pts/*",
    },
    Allowed {
        major: 10,
        minor: Some(232),
        what: "/dev/kvm",
    },
    // Not used yet: for networking (the VMM would join a tap device).
    Allowed {
        major: 10,
        minor: Some(200),
        what: "/dev/net/tun",
    },
];

/// cgroup v1: deny everything, then allow [`ALLOWED`] (read/write only).
pub fn apply_v1(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("devices.deny"), "a")?;
    for a in ALLOWED {
        let minor = a.minor.map_or("*".to_string(), |m| m.to_string());
        // A parent that itself denies the device refuses the allow: the
        // device then stays denied, which is the safe side.
        let _ = std::fs::write(
            dir.join("devices.allow"),
            format!("c {}:{minor} rw", a.major),
        );
    }
    Ok(())
}

// bpf(2) and the program's ABI (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Our program runs in addition to any an ancestor has (all must allow).
const BPF_F_ALLOW_MULTI: u32 = 2;
const BPF_DEVCG_DEV_CHAR: i32 = 2;
const BPF_DEVCG_ACC_MKNOD: i32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst register in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}
/// r[dst] = *(u32 *)(r[src] + off)
const fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x61, dst, src, off, 0)
}
const fn mov_reg(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0)
}
const fn mov_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm)
}
const fn and_imm(dst: u8, imm: i32) -> Insn {
    insn(0x57, dst, 0, 0, imm)
}
const fn rsh_imm(dst: u8, imm: i32) -> Insn {
    insn(0x77, dst, 0, 0, imm)
}
/// if r[dst] != imm goto +off
const fn jne_imm(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x55, dst, 0, off, imm)
}
/// if r[dst] & imm goto +off
const fn jset_imm(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x45, dst, 0, off, imm)
}
const fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0)
}

/// The program: `struct bpf_cgroup_dev_ctx { u32 access_type /* access << 16
/// | type */; u32 major; u32 minor; }` in r1; returns 1 to allow, 0 to deny.
pub fn program(allowed: &[Allowed]) -> Vec<Insn> {
    let mut p = vec![
        ldx_w(2, 1, 0),
        mov_reg(3, 2),
        and_imm(2, 0xffff), // r2 = type
        rsh_imm(3, 16),     // r3 = access
        ldx_w(4, 1, 4),     // r4 = major
        ldx_w(5, 1, 8),     // r5 = minor
    ];
    // Jumps to the final deny are patched once its index is known.
    let mut to_deny = vec![p.len()];
    p.push(jne_imm(2, BPF_DEVCG_DEV_CHAR, 0));
    to_deny.push(p.len());
    p.push(jset_imm(3, BPF_DEVCG_ACC_MKNOD, 0));
    for a in allowed {
        let len: i16 = if a.minor.is_some() { 4 } else { 3 };
        p.push(jne_imm(4, a.major as i32, len - 1));
        if let Some(m) = a.minor {
            p.push(jne_imm(5, m as i32, 2));
        }
        p.push(mov_imm(0, 1));
        p.push(exit());
    }
    let deny = p.len();
    p.push(mov_imm(0, 0));
    p.push(exit());
    for i in to_deny {
        p[i].off = (deny - i - 1) as i16;
    }
    p
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of its own size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn load(prog: &[Insn]) -> std::io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 0];
    let attempt = |log: &mut Vec<u8>| {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: prog.len() as u32,
            insns: prog.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..Default::default()
        };
        attr.prog_name[..9].copy_from_slice(b"husk_devs");
        if !log.is_empty() {
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
        }
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    match attempt(&mut log) {
        // SAFETY: bpf(BPF_PROG_LOAD) returned a new descriptor we own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e)
            if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EINVAL) =>
        {
            // The verifier refused it: say why.
            log = vec![0u8; 16 * 1024];
            let _ = attempt(&mut log);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            Err(std::io::Error::new(
                e.kind(),
                format!("{e}: {}", String::from_utf8_lossy(&log[..end]).trim()),
            ))
        }
        Err(e) => Err(e),
    }
}

/// cgroup v2: attaches the device program to cgroup directory `dir`. It
/// stays attached (the cgroup holds it) until the cgroup is removed.
pub fn apply_v2(dir: &Path) -> std::io::Result<()> {
    let prog = load(&program(ALLOWED))?;
    let cg = std::fs::File::open(dir)?;
    let mut attr = ProgAttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn program_shape() {
        let p = program(ALLOWED);
        assert_eq!(p.len(), 6 + 2 + 9 * 4 + 3 + 2);
        assert_eq!(p[p.len() - 1], exit());
        assert_eq!(p[p.len() - 2], mov_imm(0, 0));
        // Both early checks jump exactly to the deny.
        let deny = p.len() - 2;
        assert_eq!(6 + 1 + p[6].off as usize, deny);
        assert_eq!(7 + 1 + p[7].off as usize, deny);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }

    fn open_errno(path: &Path) -> i32 {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: plain open/close.
        unsafe {
            let fd = libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                libc::close(fd);
                0
            } else {
                *libc::__errno_location()
            }
        }
    }

    /// Loads and attaches the program for real on a cgroup v2 tree (the
    /// unified one of a hybrid host too), moves a child in and has it open
    /// devices. Needs root and a writable cgroup2 mount; skipped without.
    #[test]
    fn v2_program_denies_all_but_the_list() {
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists());
        let Some(root) = root else {
            eprintln!("skipped: no cgroup2 mount");
            return;
        };
        let cg = root.join(format!("husk-devtest-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&cg) {
            eprintln!("skipped: cannot create {}: {e}", cg.display());
            return;
        }
        let tmp = std::env::temp_dir().join(format!("husk-devtest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let node = |name: &str, kind: libc::mode_t, maj, min| {
            let p = tmp.join(name);
            let c = CString::new(p.as_os_str().as_bytes()).unwrap();
            // SAFETY: mknod on a path we own.
            let r = unsafe { libc::mknod(c.as_ptr(), kind | 0o600, libc::makedev(maj, min)) };
            assert_eq!(r, 0, "mknod {name}: {}", std::io::Error::last_os_error());
            p
        };
        let mem = node("mem", libc::S_IFCHR, 1, 1);
        let blk = node("blk", libc::S_IFBLK, 7, 0);
        let null = node("null", libc::S_IFCHR, 1, 3);
        // What the host allows us without the program (a restricted
        // container may already deny some).
        // ENXIO: allowed, no such device. Anything else (EACCES on a nodev
        // /tmp, EPERM in a restricted container) cannot tell us apart.
        let usable = |p: &Path| matches!(open_errno(p), 0 | libc::ENXIO);
        let (mem_usable, blk_usable, null_usable) = (usable(&mem), usable(&blk), usable(&null));

        apply_v2(&cg).unwrap();
        let procs = CString::new(cg.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
        let paths: Vec<CString> = [&mem, &blk, &null, Path::new("/dev/null")]
            .iter()
            .map(|p| CString::new(p.as_os_str().as_bytes()).unwrap())
            .collect();
        // SAFETY: the child only makes syscalls on prepared buffers, then _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(100);
                }
                libc::close(fd);
                // Exit code: one bit per expectation that failed.
                let mut bad = 0;
                let errno_of = |p: &CString| {
                    let fd = libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK);
                    if fd >= 0 {
                        libc::close(fd);
                        0
                    } else {
                        *libc::__errno_location()
                    }
                };
                if errno_of(&paths[0]) != libc::EPERM {
                    bad |= 1;
                }
                if errno_of(&paths[1]) != libc::EPERM {
                    bad |= 2;
                }
                if errno_of(&paths[3]) != 0 {
                    bad |= 4;
                }
                if errno_of(&paths[2]) != 0 {
                    bad |= 8;
                }
                libc::_exit(bad);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_dir(&cg);
        assert!(libc::WIFEXITED(status), "{status:#x}");
        let code = libc::WEXITSTATUS(status);
        assert_ne!(code, 100, "cannot join the test cgroup");
        assert_eq!(code & 4, 0, "/dev/null must stay usable");
        if mem_usable {
            assert_eq!(code & 1, 0, "char 1:1 must be denied");
        }
        if blk_usable {
            assert_eq!(code & 2, 0, "block 7:0 must be denied");
        }
        if null_usable {
            assert_eq!(code & 8, 0, "a node for 1:3 must stay usable");
        }
        assert!(mem_usable || blk_usable, "nothing could be checked");
    }
}
