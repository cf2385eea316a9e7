//! virtio-fs: FUSE requests in descriptor chains in guest memory, through the
//! device's request layer (`fs/request.rs`), `ConfinedFs` and a real
//! `PassthroughFs`, as the `fs-worker` thread runs them (`FuzzFs`, feature
//! `fuzzing`). Descriptor-chain walking is virtio-queue's; it is fuzzed here
//! through raw descriptors.
//!
//! # Confinement of the fuzzer itself (it runs as root)
//! All file system work happens on one sandbox thread that, before the
//! first input, unshares its fs_struct and mount namespace (the libFuzzer
//! thread keeps the host's), makes every mount in its namespace read-only,
//! nodev and nosuid (`mount_setattr(AT_RECURSIVE)`), and mounts a small
//! tmpfs (16 MiB, 4096 inodes) on this process's scratch directory. The
//! share is `<scratch>/shared`, rebuilt for every input; `<scratch>/outside`
//! holds a secret. So even a confinement bug can write nothing but that
//! tmpfs, and the checks after each input turn an escape into a crash: the
//! secret changed or read into guest memory, or a new entry next to
//! `shared`. Without root (or `mount_setattr`, Linux 5.12) the target
//! refuses to run.
//!
//! # Input
//! Byte 0: bits 0-1 cache mode (Never/Auto/Always/Auto), bit 2 xattr, bit 3
//! writeback, bits 4-5 queue size (8/64/256/1024). Then operations (see
//! `Op`), each one opcode byte plus operands; missing bytes read as 0.
#![no_main]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, OnceLock};

use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader};
use husk_fuzz::cursor::Cursor;
use husk_fuzz::ring::{guest_memory, write_desc, Alloc, Desc, Mem, Pending, Ring, F_WRITE};
use husk_vmm::devices::virtio::fs::fuzzing::{FuzzFs, MAX_CHAIN_BYTES};
use husk_vmm::devices::virtio::fs::{CacheMode, FsOptions, QUEUE_MAX_SIZE};
use libfuzzer_sys::fuzz_target;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory};

const MEM_SIZE: u64 = 4 << 20;
const RING_BASE: [u64; 2] = [0, 0x1_0000]; // hiprio, request
const INDIRECT_BASE: u64 = 0x2_0000;
const INDIRECT_END: u64 = 0x4_0000;
const BUF_BASE: u64 = 0x4_0000;
const SECRET: &[u8] = b"husk-fuzz: host secret outside the share";

// ---------------------------------------------------------------- sandbox

struct Sandbox {
    jobs: Mutex<Sender<Vec<u8>>>,
    done: Mutex<Receiver<()>>,
}

fn sandbox() -> &'static Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| {
        let base = husk_fuzz::scratch::process_dir("fs");
        let (jobs, job_rx) = mpsc::channel::<Vec<u8>>();
        let (done_tx, done) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("fuzz-fs".into())
            .spawn(move || {
                confine(&base);
                ready_tx.send(()).unwrap();
                for data in job_rx {
                    run_one(&base, &data);
                    if done_tx.send(()).is_err() {
                        return;
                    }
                }
            })
            .unwrap();
        // A panic in `confine` aborts the process (libFuzzer's panic hook).
        ready_rx.recv().expect("fs sandbox thread failed to start");
        Sandbox {
            jobs: Mutex::new(jobs),
            done: Mutex::new(done),
        }
    })
}

fn check(what: &str, rc: libc::c_long) {
    if rc < 0 {
        panic!(
            "fs_request sandbox: {what}: {} (the target needs root and Linux >= 5.12)",
            std::io::Error::last_os_error()
        );
    }
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Private mount namespace for this thread, everything read-only but a
/// small tmpfs on `base`.
fn confine(base: &Path) {
    let cpath = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: plain syscalls on this thread's own fs_struct / mount
    // namespace, with valid NUL-terminated strings and a live MountAttr.
    unsafe {
        check(
            "unshare(CLONE_FS|CLONE_NEWNS)",
            libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS) as _,
        );
        check(
            "make / rprivate",
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) as _,
        );
        const MOUNT_ATTR_RDONLY: u64 = 0x1;
        const MOUNT_ATTR_NOSUID: u64 = 0x2;
        const MOUNT_ATTR_NODEV: u64 = 0x4;
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        check(
            "mount_setattr(/, AT_RECURSIVE, RDONLY|NOSUID|NODEV)",
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                c"/".as_ptr(),
                libc::AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            ),
        );
        // libFuzzer writes a crash's input from the thread that crashed, so
        // the artifact directory (cargo fuzz run passes -artifact_prefix)
        // stays writable here; without one, a crash on this thread is only
        // reported, not saved.
        if let Some(dir) = artifact_dir() {
            let d = cpath(&dir);
            check(
                "bind the artifact dir",
                libc::mount(
                    d.as_ptr(),
                    d.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) as _,
            );
            let rw = MountAttr {
                attr_set: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                attr_clr: MOUNT_ATTR_RDONLY,
                propagation: 0,
                userns_fd: 0,
            };
            check(
                "mount_setattr(artifact dir, rw)",
                libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    d.as_ptr(),
                    0,
                    &rw as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                ),
            );
        }
        check(
            "mount tmpfs",
            libc::mount(
                c"husk-fuzz-fs".as_ptr(),
                cpath(base).as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"size=16m,nr_inodes=4096,mode=0755".as_ptr().cast(),
            ) as _,
        );
        // As the fs-worker thread: PassthroughFs applies the guest's umask.
        libc::umask(0);
    }
    // The host's root really is read-only from here.
    assert!(std::fs::write("/husk-fuzz-probe", b"x").is_err());
    std::fs::create_dir(base.join("outside")).unwrap();
    std::fs::write(base.join("outside/secret"), SECRET).unwrap();
}

/// The directory of libFuzzer's `-artifact_prefix=`, if given and present.
fn artifact_dir() -> Option<PathBuf> {
    let prefix =
        std::env::args().find_map(|a| a.strip_prefix("-artifact_prefix=").map(PathBuf::from))?;
    let dir = if prefix.as_os_str().as_bytes().ends_with(b"/") {
        prefix
    } else {
        prefix.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    std::fs::canonicalize(dir).ok().filter(|d| d.is_dir())
}

/// `shared/` as every input starts with it: files, a directory, symlinks
/// pointing out of the share, a fifo.
fn reset_share(shared: &Path) {
    if shared.exists() {
        std::fs::remove_dir_all(shared).expect("clean the share");
    }
    std::fs::create_dir_all(shared.join("sub/deeper")).unwrap();
    std::fs::write(shared.join("hello.txt"), b"hello from the host\n").unwrap();
    std::fs::write(shared.join("sub/inner.txt"), b"inner").unwrap();
    std::os::unix::fs::symlink("../outside/secret", shared.join("up")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", shared.join("abs")).unwrap();
    let fifo = CString::new(shared.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path string.
    unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
}

fn assert_confined(base: &Path) {
    let mut names: Vec<_> = std::fs::read_dir(base)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["outside", "shared"],
        "something was created outside the share"
    );
    let outside: Vec<_> = std::fs::read_dir(base.join("outside"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, ["secret"], "the outside directory changed");
    assert_eq!(
        std::fs::read(base.join("outside/secret")).unwrap(),
        SECRET,
        "the secret outside the share changed"
    );
}

// ---------------------------------------------------------------- one input

/// What the harness knows about a chain it built, to check the used length.
struct Sent {
    unique: u64,
    capacity: u64,
    /// Guest addresses of the writable part, in order.
    writable: Vec<(u64, u32)>,
}

struct Run {
    mem: Mem,
    rings: [Ring; 2],
    queues: [virtio_queue::Queue; 2],
    fs: FuzzFs,
    alloc: Alloc,
    indirect: Alloc,
    sent: [Pending<Sent>; 2],
    unique: u64,
    /// Raw descriptors or memory writes were used: replies may land anywhere.
    raw: bool,
    /// Guest memory was written directly: even our own chains may have changed.
    poked: bool,
    /// Highest guest address the device may have written.
    high: u64,
}

impl Run {
    fn process(&mut self, q: usize) {
        // An error means the used ring could not be written; the worker then stops the device.
        let _ = self.fs.process_queue(&self.mem, &mut self.queues[q]);
        for (id, len) in self.rings[q].take_used(&self.mem) {
            let Some(s) = self.sent[q].take(id) else {
                continue;
            };
            if self.poked {
                continue;
            }
            if trace() {
                let mut out = OutHeader::default();
                if let Some(&(a, _)) = s.writable.first() {
                    let _ = self.mem.read_slice(out.as_mut_slice(), GuestAddress(a));
                }
                eprintln!("fs_request: q{q} unique {} used {len}: {out:?}", s.unique);
            }
            assert!(
                u64::from(len) <= s.capacity,
                "used length {len} exceeds the chain's writable {} bytes",
                s.capacity
            );
            if self.raw || len < 16 {
                continue;
            }
            let mut out = OutHeader::default();
            let buf = out.as_mut_slice();
            let mut filled = 0;
            for &(addr, dlen) in &s.writable {
                let n = (dlen as usize).min(buf.len() - filled);
                self.mem
                    .read_slice(&mut buf[filled..filled + n], GuestAddress(addr))
                    .unwrap();
                filled += n;
                if filled == buf.len() {
                    break;
                }
            }
            assert_eq!(out.unique, s.unique, "reply to another request");
            assert!(
                out.len as u64 <= s.capacity && out.error <= 0 && out.error > -4096,
                "bad reply header {out:?} (used length {len})"
            );
        }
    }

    fn touch(&mut self, addr: u64, len: u64) {
        self.high = self.high.max(addr.saturating_add(len).min(MEM_SIZE));
    }

    /// One FUSE request from the input.
    fn request(&mut self, c: &mut Cursor) {
        let flags = c.u8();
        let q = usize::from(flags & 4 != 0) ^ 1; // mostly the request queue
        let opcode = match c.u8() {
            0 => c.u32(),
            o => u32::from(o),
        };
        let nodeid = match c.u8() {
            0xff => c.u64(),
            n => u64::from(n),
        };
        let id = |v: u8| if v == 0 { 0 } else { 999 + u32::from(v % 4) };
        let (uid, gid) = (id(c.u8()), id(c.u8()));
        let split = c.u8();
        let capacity = match c.u16() {
            0xffff => MAX_CHAIN_BYTES + 16,
            n => u64::from(n),
        };
        let args_len = usize::from(c.u16() % 8192);
        let args = c.bytes(args_len);
        let fixed_len = if flags & 1 != 0 { Some(c.u32()) } else { None };
        self.unique += 1;
        let total = std::mem::size_of::<InHeader>() + args.len();
        let hdr = InHeader {
            len: fixed_len.unwrap_or(total as u32),
            opcode,
            unique: self.unique,
            nodeid,
            uid,
            gid,
            pid: 1,
            padding: 0,
        };
        let mut msg = hdr.as_slice().to_vec();
        msg.extend_from_slice(args);

        // Readable: `nr` descriptors, the first `first` bytes long.
        let mut descs = Vec::new();
        let nr = 1 + usize::from(split & 3);
        let first = usize::from(split >> 4) * 3 + 1;
        let buf = self.alloc.get(msg.len() as u64);
        self.mem.write_slice(&msg, GuestAddress(buf)).unwrap();
        let mut off = 0;
        for i in 0..nr {
            let len = if i + 1 == nr {
                msg.len() - off
            } else if i == 0 {
                first.min(msg.len())
            } else {
                (msg.len() - off) / 2
            };
            descs.push((buf + off as u64, len as u32, 0));
            off += len;
        }
        if flags & 0x20 != 0 {
            // Readable part over the device's limit (the bytes past the message are whatever).
            descs.push((BUF_BASE, MAX_CHAIN_BYTES as u32, 0));
        }
        // Writable: `nw` descriptors sharing `capacity` bytes.
        let nw = if capacity == 0 {
            0
        } else {
            1 + usize::from((split >> 2) & 3)
        };
        let mut writable = Vec::new();
        let mut left = capacity;
        for i in 0..nw {
            let len = if i + 1 == nw {
                left
            } else {
                (left / 2).max(1).min(left)
            };
            let a = if len > (MEM_SIZE - BUF_BASE) / 2 {
                BUF_BASE // oversized on purpose: never written (the device refuses it)
            } else {
                self.alloc.get(len)
            };
            self.touch(a, len);
            descs.push((a, len as u32, F_WRITE));
            writable.push((a, len as u32));
            left -= len;
        }
        let size = self.rings[q].size;
        let (head, slots) = if flags & 2 != 0 && descs.len() <= 16 {
            let table = self.indirect.get(16 * descs.len() as u64);
            (self.rings[q].add_indirect(&self.mem, table, &descs), 1)
        } else {
            let n = descs.len().min(usize::from(size)) as u16;
            (self.rings[q].add_chain(&self.mem, &descs), n)
        };
        let sent = Sent {
            unique: self.unique,
            capacity,
            writable,
        };
        // A chain longer than the ring is cut short by add_chain: unverifiable.
        let ok = usize::from(slots) == descs.len() || flags & 2 != 0;
        self.sent[q].add(head, slots, size, ok.then_some(sent));
        if flags & 8 == 0 {
            self.process(q);
        }
    }

    /// Descriptors exactly as the input has them, then a head made available.
    fn raw_chain(&mut self, c: &mut Cursor) {
        self.raw = true;
        let q = usize::from(c.bool());
        let n = 1 + c.u8() % 8;
        let slot0 = c.u16();
        let size = self.rings[q].size;
        for i in 0..u16::from(n) {
            let d = Desc {
                addr: c.u32().into(),
                len: c.u32() % (2 << 20),
                flags: c.u16(),
                next: c.u16(),
            };
            if d.flags & F_WRITE != 0 {
                self.touch(d.addr, d.len.into());
            }
            write_desc(
                &self.mem,
                self.rings[q].desc,
                slot0.wrapping_add(i) % size,
                d,
            );
        }
        self.rings[q].publish(&self.mem, slot0 % size);
        self.sent[q].add(slot0 % size, n.into(), size, None);
    }

    fn poke(&mut self, c: &mut Cursor) {
        self.raw = true;
        self.poked = true;
        let addr = u64::from(c.u32()) % MEM_SIZE;
        let len = usize::from(c.u8());
        let data = c.bytes(len);
        let _ = self.mem.write_slice(data, GuestAddress(addr));
        self.touch(addr, len as u64);
    }
}

/// `HUSK_FUZZ_TRACE=1`: print every reply (to check what a seed reaches).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("HUSK_FUZZ_TRACE").is_some())
}

fn run_one(base: &Path, data: &[u8]) {
    let shared: PathBuf = base.join("shared");
    reset_share(&shared);
    let mut c = Cursor::new(data);
    let opt = c.u8();
    let opts = FsOptions {
        cache: [
            CacheMode::Never,
            CacheMode::Auto,
            CacheMode::Always,
            CacheMode::Auto,
        ][usize::from(opt & 3)],
        xattr: opt & 4 != 0,
        writeback: opt & 8 != 0,
    };
    let size = [8u16, 64, 256, 1024][usize::from((opt >> 4) & 3)];
    let fs = FuzzFs::new(shared.to_str().unwrap(), &opts).expect("FuzzFs on the scratch share");
    let mem = guest_memory(MEM_SIZE as usize);
    let rings = RING_BASE.map(|b| Ring::new(b, size));
    let queues = [
        rings[0].queue(QUEUE_MAX_SIZE),
        rings[1].queue(QUEUE_MAX_SIZE),
    ];
    let mut run = Run {
        mem,
        rings,
        queues,
        fs,
        alloc: Alloc::new(BUF_BASE, MEM_SIZE),
        indirect: Alloc::new(INDIRECT_BASE, INDIRECT_END),
        sent: [Pending::default(), Pending::default()],
        unique: 0,
        raw: false,
        poked: false,
        high: BUF_BASE,
    };
    let mut ops = 0;
    while !c.is_empty() && ops < 64 {
        ops += 1;
        match c.u8() % 5 {
            0 => run.request(&mut c),
            1 => run.raw_chain(&mut c),
            2 => run.poke(&mut c),
            3 => run.process(usize::from(c.bool())),
            _ => {
                run.raw = true;
                let q = usize::from(c.bool());
                let idx = c.u16();
                run.rings[q].set_avail_idx(&run.mem, idx);
            }
        }
    }
    run.process(0);
    run.process(1);

    // Nothing of the secret may reach the guest.
    let high = run.high.min(run.mem.last_addr().0 + 1);
    let mut seen = vec![0u8; high as usize];
    run.mem.read_slice(&mut seen, GuestAddress(0)).unwrap();
    assert!(
        memchr::memmem::find(&seen, SECRET).is_none(),
        "the secret outside the share reached guest memory"
    );
    drop(run);
    assert_confined(base);
}

fuzz_target!(|data: &[u8]| {
    let s = sandbox();
    s.jobs.lock().unwrap().send(data.to_vec()).unwrap();
    s.done
        .lock()
        .unwrap()
        .recv()
        .expect("the fs sandbox thread died");
});
