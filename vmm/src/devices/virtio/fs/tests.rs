//! Device-level tests: a fake guest driver (split rings in real guest memory,
//! FUSE requests built from `fuse_abi` structs) on one side, a real
//! `PassthroughFs` on a temporary directory on the other, with the real
//! worker thread in between. A sibling "outside" directory holds a secret the
//! guest must never reach.
//!
//! Ring layout as in the vsock tests (not `MockSplitQueue`, whose 0.17 ring
//! layout overlaps at large queue sizes): the rings start zeroed because
//! guest memory does.

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, BatchForgetIn, CreateIn, EntryOut, ForgetIn, FsOptions as FuseOptions, GetattrIn,
    InHeader, InitIn, InitOut, LinkIn, MkdirIn, MknodIn, Opcode, OpenIn, OpenOut, OutHeader,
    ReadIn, ReleaseIn, RenameIn, SetattrIn, SetattrValid, WriteIn, WriteOut, ROOT_ID,
};
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::UMASK_LOCK;
use super::request::MAX_CHAIN_BYTES;
use super::*;
use crate::devices::virtio::{
    ActivateError, ActivatedQueue, Interrupt, VirtioDevice, TYPE_FS, VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemoryMmap;

const QSIZE: u16 = QUEUE_MAX_SIZE;
const QUEUE_ADDR: [u64; NUM_QUEUES] = [0x0, 0x1_0000];
const BUF_BASE: u64 = 0x10_0000;
const MEM_SIZE: u64 = 0x400_0000;
const REPLY_LEN: u32 = 8192;
const WAIT: Duration = Duration::from_secs(20);

const SECRET: &[u8] = b"top secret, host only\n";
const HELLO: &[u8] = b"hello from the host\n";

// ------------------------------------------------------------------ fixtures

/// Records who raised interrupts.
#[derive(Default)]
struct TestInterrupt {
    used: AtomicUsize,
    threads: Mutex<Vec<String>>,
}

impl Interrupt for TestInterrupt {
    fn signal_used_queue(&self) -> io::Result<()> {
        let name = std::thread::current().name().unwrap_or("").to_owned();
        self.threads.lock().unwrap().push(name);
        self.used.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn signal_config_change(&self) -> io::Result<()> {
        Ok(())
    }
}

/// `<tmp>/husk-fs-<pid>-<tag>-<n>/{shared,outside}`:
/// shared/hello.txt, shared/sub/inner.txt, shared/sub/deeper/, outside/secret.
struct TestDirs {
    base: PathBuf,
    shared: PathBuf,
    outside: PathBuf,
    secret_meta: (u64, u32),
}

impl TestDirs {
    fn new(tag: &str) -> TestDirs {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = std::env::temp_dir().join(format!("husk-fs-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let shared = base.join("shared");
        let outside = base.join("outside");
        std::fs::create_dir_all(shared.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), SECRET).unwrap();
        std::fs::write(shared.join("hello.txt"), HELLO).unwrap();
        std::fs::write(shared.join("sub/inner.txt"), b"inner").unwrap();
        let m = std::fs::metadata(outside.join("secret")).unwrap();
        TestDirs {
            base,
            shared,
            outside,
            secret_meta: (m.ino(), m.mode()),
        }
    }

    /// The outside directory still holds exactly the untouched secret.
    fn assert_outside_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
        assert_eq!(std::fs::read(self.outside.join("secret")).unwrap(), SECRET);
        let m = std::fs::metadata(self.outside.join("secret")).unwrap();
        assert_eq!((m.ino(), m.mode()), self.secret_meta);
        let base_names: Vec<_> = std::fs::read_dir(&self.base)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let mut base_names = base_names;
        base_names.sort();
        assert_eq!(base_names, ["outside", "shared"]);
    }
}

impl Drop for TestDirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn current_umask() -> u32 {
    let _g = UMASK_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    // SAFETY: umask() only swaps the process file mode mask; restored at once.
    let m = unsafe { libc::umask(0o022) };
    // SAFETY: as above.
    unsafe { libc::umask(m) };
    m
}

fn is_root() -> bool {
    // SAFETY: geteuid has no side effects.
    unsafe { libc::geteuid() == 0 }
}

#[derive(Clone, Copy)]
struct Rings {
    desc: u64,
    avail: u64,
    used: u64,
}

impl Rings {
    fn layout(base: u64) -> Rings {
        let q = u64::from(QSIZE);
        let avail = base + 16 * q;
        // flags, idx, ring[q], used_event
        let used = (avail + 4 + 2 * q + 2 + 3) & !3;
        assert!(used + 4 + 8 * q + 2 <= base + 0x1_0000);
        Rings {
            desc: base,
            avail,
            used,
        }
    }
}

/// A FUSE reply as the guest sees it.
#[derive(Debug)]
struct Reply {
    used_len: u32,
    hdr: OutHeader,
    data: Vec<u8>,
}

impl Reply {
    /// The payload, or the positive errno.
    fn result(&self) -> Result<&[u8], i32> {
        if self.hdr.error == 0 {
            Ok(&self.data)
        } else {
            Err(-self.hdr.error)
        }
    }
}

fn obj<T: ByteValued + Default>(data: &[u8]) -> T {
    let mut t = T::default();
    let n = size_of::<T>();
    assert!(data.len() >= n, "reply too short: {} < {n}", data.len());
    t.as_mut_slice().copy_from_slice(&data[..n]);
    t
}

fn cstr(s: &str) -> Vec<u8> {
    CString::new(s).unwrap().into_bytes_with_nul()
}

/// The fake guest driver plus the device under test.
struct Harness {
    mem: GuestMemoryMmap,
    rings: [Rings; NUM_QUEUES],
    dev: Arc<Mutex<Fs>>,
    irq: Arc<TestInterrupt>,
    kicks: Vec<EventFd>,
    dirs: TestDirs,
    next_desc: [u16; NUM_QUEUES],
    next_buf: u64,
    used_seen: [u16; NUM_QUEUES],
    unique: u64,
}

impl Harness {
    fn new(tag: &str) -> Harness {
        Self::with_options(tag, FsOptions::default())
    }

    fn with_options(tag: &str, opts: FsOptions) -> Harness {
        let mut h = Self::new_inactive(tag, opts);
        h.activate();
        h
    }

    fn new_inactive(tag: &str, opts: FsOptions) -> Harness {
        Self::new_inactive_with_budget(tag, opts, fd_budget(1))
    }

    /// Activated, at most `max_fds` inodes + handles for the guest.
    fn with_fd_budget(tag: &str, max_fds: usize) -> Harness {
        let mut h = Self::new_inactive_with_budget(tag, FsOptions::default(), max_fds);
        h.activate();
        h
    }

    fn new_inactive_with_budget(tag: &str, opts: FsOptions, max_fds: usize) -> Harness {
        let dirs = TestDirs::new(tag);
        let dev = Fs::with_fd_budget("hostshare", &dirs.shared, opts, max_fds).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        Harness {
            mem,
            rings: QUEUE_ADDR.map(Rings::layout),
            dev: Arc::new(Mutex::new(dev)),
            irq: Arc::new(TestInterrupt::default()),
            kicks: Vec::new(),
            dirs,
            next_desc: [0; NUM_QUEUES],
            next_buf: BUF_BASE,
            used_seen: [0; NUM_QUEUES],
            unique: 0,
        }
    }

    fn activated_queues(&mut self) -> Vec<ActivatedQueue> {
        self.kicks.clear();
        (0..NUM_QUEUES)
            .map(|q| {
                let kick = EventFd::new(EFD_NONBLOCK).unwrap();
                self.kicks.push(kick.try_clone().unwrap());
                ActivatedQueue {
                    queue: self.queue(q),
                    kick,
                }
            })
            .collect()
    }

    fn activate(&mut self) {
        let queues = self.activated_queues();
        self.dev()
            .activate(self.mem.clone(), self.irq.clone(), queues)
            .unwrap();
    }

    /// What a driver does after a device reset: fresh (zeroed) rings.
    fn reset_rings(&mut self) {
        let zero = vec![0u8; 0x2_0000];
        self.mem.write_slice(&zero, GuestAddress(0)).unwrap();
        self.next_desc = [0; NUM_QUEUES];
        self.used_seen = [0; NUM_QUEUES];
    }

    fn dev(&self) -> MutexGuard<'_, Fs> {
        self.dev.lock().unwrap()
    }

    fn queue(&self, q: usize) -> Queue {
        let r = self.rings[q];
        let mut queue = Queue::new(QSIZE).unwrap();
        queue.set_size(QSIZE);
        queue.set_desc_table_address(Some(r.desc as u32), Some((r.desc >> 32) as u32));
        queue.set_avail_ring_address(Some(r.avail as u32), Some((r.avail >> 32) as u32));
        queue.set_used_ring_address(Some(r.used as u32), Some((r.used >> 32) as u32));
        queue.set_ready(true);
        queue
    }

    fn read_u16(&self, addr: u64) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(addr)).unwrap())
    }

    fn write_u16(&self, addr: u64, v: u16) {
        self.mem.write_obj(v.to_le(), GuestAddress(addr)).unwrap();
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.read_u16(self.rings[q].used + 2)
    }

    fn avail_idx(&self, q: usize) -> u16 {
        self.read_u16(self.rings[q].avail + 2)
    }

    /// (id, len) of used ring entry `i` of queue `q`.
    fn used_elem(&self, q: usize, i: u16) -> (u32, u32) {
        let addr = self.rings[q].used + 4 + 8 * u64::from(i % QSIZE);
        let e: VirtqUsedElem = self.mem.read_obj(GuestAddress(addr)).unwrap();
        (e.id(), e.len())
    }

    fn alloc(&mut self, len: u64) -> u64 {
        if self.next_buf + len > MEM_SIZE {
            self.next_buf = BUF_BASE;
        }
        let addr = self.next_buf;
        self.next_buf = (addr + len + 15) & !15;
        addr
    }

    fn put(&mut self, bytes: &[u8]) -> u64 {
        let a = self.alloc(bytes.len() as u64);
        self.mem.write_slice(bytes, GuestAddress(a)).unwrap();
        a
    }

    /// Make a chain available on queue `q`: (addr, len, device-writable).
    fn add_chain(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u16 {
        let n = descs.len() as u16;
        let mut start = self.next_desc[q];
        if start + n > QSIZE {
            start = 0;
        }
        self.next_desc[q] = start + n;
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let i = i as u16;
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < n {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.write_desc(q, start + i, addr, len, flags, start + i + 1);
        }
        self.publish(q, start);
        start
    }

    fn write_desc(&self, q: usize, slot: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        let daddr = self.rings[q].desc + 16 * u64::from(slot % QSIZE);
        self.mem.write_obj(d, GuestAddress(daddr)).unwrap();
    }

    fn publish(&self, q: usize, head: u16) {
        let r = self.rings[q];
        let idx = self.read_u16(r.avail + 2);
        self.write_u16(r.avail + 4 + 2 * u64::from(idx % QSIZE), head);
        self.write_u16(r.avail + 2, idx.wrapping_add(1));
    }

    fn kick(&self, q: usize) {
        self.kicks[q].write(1).unwrap();
    }

    /// Wait until the device used everything made available on `q`.
    fn wait_all_used(&mut self, q: usize) {
        let target = self.avail_idx(q);
        let deadline = Instant::now() + WAIT;
        while self.used_idx(q) != target {
            assert!(Instant::now() < deadline, "device did not use queue {q}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Offer a chain, kick, and return its used length.
    fn send(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u32 {
        let head = self.add_chain(q, descs);
        self.kick(q);
        self.wait_all_used(q);
        let (id, len) = self.used_elem(q, self.used_seen[q]);
        self.used_seen[q] = self.used_seen[q].wrapping_add(1);
        assert_eq!(id, u32::from(head));
        len
    }

    fn next_unique(&mut self) -> u64 {
        self.unique += 2;
        self.unique
    }

    fn header(&mut self, opcode: u32, nodeid: u64, body_len: usize) -> InHeader {
        InHeader {
            len: (size_of::<InHeader>() + body_len) as u32,
            opcode,
            unique: self.next_unique(),
            nodeid,
            uid: 0,
            gid: 0,
            pid: 1,
            padding: 0,
        }
    }

    fn read_reply(&self, addr: u64, used_len: u32) -> Reply {
        let mut hdr = OutHeader::default();
        if used_len as usize >= size_of::<OutHeader>() {
            self.mem
                .read_slice(hdr.as_mut_slice(), GuestAddress(addr))
                .unwrap();
        }
        let n = (used_len as usize).saturating_sub(size_of::<OutHeader>());
        let mut data = vec![0u8; n];
        self.mem
            .read_slice(
                &mut data,
                GuestAddress(addr + size_of::<OutHeader>() as u64),
            )
            .unwrap();
        Reply {
            used_len,
            hdr,
            data,
        }
    }

    /// Send one request (header + `args`) on the request queue with one
    /// writable buffer of `reply_len` bytes.
    fn call_with(&mut self, opcode: u32, nodeid: u64, args: &[&[u8]], reply_len: u32) -> Reply {
        let body = args.concat();
        let hdr = self.header(opcode, nodeid, body.len());
        let req = [hdr.as_slice(), &body].concat();
        let ia = self.put(&req);
        let oa = self.alloc(u64::from(reply_len));
        let used = self.send(
            REQUEST_QUEUE,
            &[(ia, req.len() as u32, false), (oa, reply_len, true)],
        );
        let reply = self.read_reply(oa, used);
        if reply.used_len > 0 {
            assert_eq!(reply.hdr.unique, hdr.unique);
            assert_eq!(reply.hdr.len, reply.used_len, "out header len = used len");
        }
        reply
    }

    fn call(&mut self, op: Opcode, nodeid: u64, args: &[&[u8]]) -> Reply {
        self.call_with(op as u32, nodeid, args, REPLY_LEN)
    }

    // --------------------------------------------------------- FUSE helpers

    fn init(&mut self) -> InitOut {
        let flags = FuseOptions::ASYNC_READ
            | FuseOptions::BIG_WRITES
            | FuseOptions::MAX_PAGES
            | FuseOptions::DO_READDIRPLUS
            | FuseOptions::WRITEBACK_CACHE
            | FuseOptions::ZERO_MESSAGE_OPEN
            | FuseOptions::ZERO_MESSAGE_OPENDIR
            | FuseOptions::PARALLEL_DIROPS;
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 128 * 1024,
            flags: flags.bits() as u32,
        };
        let r = self.call(Opcode::Init, 0, &[init.as_slice()]);
        obj(r.result().expect("FUSE_INIT"))
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        self.call(Opcode::Lookup, parent, &[&cstr(name)])
            .result()
            .map(obj)
    }

    fn getattr(&mut self, node: u64) -> Result<AttrOut, i32> {
        let a = GetattrIn::default();
        self.call(Opcode::Getattr, node, &[a.as_slice()])
            .result()
            .map(obj)
    }

    fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        let a = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        self.call(Opcode::Open, node, &[a.as_slice()])
            .result()
            .map(|d| obj::<OpenOut>(d).fh)
    }

    fn opendir(&mut self, node: u64) -> Result<u64, i32> {
        let a = OpenIn::default();
        self.call(Opcode::Opendir, node, &[a.as_slice()])
            .result()
            .map(|d| obj::<OpenOut>(d).fh)
    }

    fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let a = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        self.call_with(Opcode::Read as u32, node, &[a.as_slice()], size + 16)
            .result()
            .map(|d| d.to_vec())
    }

    fn readdir_names(&mut self, node: u64, fh: u64) -> Result<Vec<String>, i32> {
        let a = ReadIn {
            fh,
            size: 4096,
            ..Default::default()
        };
        let r = self.call(Opcode::Readdir, node, &[a.as_slice()]);
        let mut d = r.result()?;
        let mut names = Vec::new();
        while d.len() >= 24 {
            let namelen = u32::from_le_bytes(d[16..20].try_into().unwrap()) as usize;
            names.push(String::from_utf8(d[24..24 + namelen].to_vec()).unwrap());
            let rec = (24 + namelen + 7) & !7;
            d = &d[rec.min(d.len())..];
        }
        Ok(names)
    }

    fn release(&mut self, node: u64, fh: u64) -> Result<(), i32> {
        let a = ReleaseIn {
            fh,
            ..Default::default()
        };
        self.call(Opcode::Release, node, &[a.as_slice()])
            .result()
            .map(|_| ())
    }

    fn readlink(&mut self, node: u64) -> Result<Vec<u8>, i32> {
        self.call(Opcode::Readlink, node, &[])
            .result()
            .map(|d| d.to_vec())
    }

    fn create(
        &mut self,
        parent: u64,
        name: &str,
        flags: i32,
        mode: u32,
    ) -> Result<(EntryOut, OpenOut), i32> {
        let a = CreateIn {
            flags: flags as u32,
            mode: libc::S_IFREG | mode,
            umask: 0,
            fuse_flags: 0,
        };
        self.call(Opcode::Create, parent, &[a.as_slice(), &cstr(name)])
            .result()
            .map(|d| (obj(d), obj(&d[size_of::<EntryOut>()..])))
    }

    fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let a = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        self.call(Opcode::Write, node, &[a.as_slice(), data])
            .result()
            .map(|d| obj::<WriteOut>(d).size)
    }

    fn mkdir(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let a = MkdirIn {
            mode: 0o755,
            umask: 0,
        };
        self.call(Opcode::Mkdir, parent, &[a.as_slice(), &cstr(name)])
            .result()
            .map(obj)
    }

    fn mknod(&mut self, parent: u64, name: &str, mode: u32, rdev: u32) -> Result<EntryOut, i32> {
        let a = MknodIn {
            mode,
            rdev,
            umask: 0,
            padding: 0,
        };
        self.call(Opcode::Mknod, parent, &[a.as_slice(), &cstr(name)])
            .result()
            .map(obj)
    }

    fn symlink(&mut self, parent: u64, name: &str, target: &str) -> Result<EntryOut, i32> {
        self.call(Opcode::Symlink, parent, &[&cstr(name), &cstr(target)])
            .result()
            .map(obj)
    }

    fn unlink(&mut self, parent: u64, name: &str) -> Result<(), i32> {
        self.call(Opcode::Unlink, parent, &[&cstr(name)])
            .result()
            .map(|_| ())
    }

    fn rmdir(&mut self, parent: u64, name: &str) -> Result<(), i32> {
        self.call(Opcode::Rmdir, parent, &[&cstr(name)])
            .result()
            .map(|_| ())
    }

    fn rename(&mut self, olddir: u64, old: &str, newdir: u64, new: &str) -> Result<(), i32> {
        let a = RenameIn { newdir };
        self.call(
            Opcode::Rename,
            olddir,
            &[a.as_slice(), &cstr(old), &cstr(new)],
        )
        .result()
        .map(|_| ())
    }

    fn link(&mut self, oldnode: u64, newparent: u64, name: &str) -> Result<EntryOut, i32> {
        let a = LinkIn { oldnodeid: oldnode };
        self.call(Opcode::Link, newparent, &[a.as_slice(), &cstr(name)])
            .result()
            .map(obj)
    }

    fn truncate(&mut self, node: u64) -> Result<AttrOut, i32> {
        let a = SetattrIn {
            valid: SetattrValid::SIZE.bits(),
            size: 0,
            ..Default::default()
        };
        self.call(Opcode::Setattr, node, &[a.as_slice()])
            .result()
            .map(obj)
    }

    fn read_file(&mut self, parent: u64, name: &str) -> Vec<u8> {
        let e = self.lookup(parent, name).expect("lookup");
        let fh = self.open(e.nodeid, libc::O_RDONLY).expect("open");
        let data = self.read(e.nodeid, fh, 0, 4096).expect("read");
        self.release(e.nodeid, fh).expect("release");
        data
    }
}

// --------------------------------------------------------------------- tests

#[test]
fn config_space_and_features() {
    let dirs = TestDirs::new("config");
    let mut fs = Fs::new("myfs", &dirs.shared, FsOptions::default()).unwrap();
    assert_eq!(fs.device_type(), TYPE_FS);
    assert_eq!(fs.queue_max_sizes(), &[1024, 1024]);
    assert_eq!(fs.avail_features(), VIRTIO_F_VERSION_1);
    fs.set_acked_features(VIRTIO_F_VERSION_1 | 1 << 28);
    assert_eq!(fs.acked_features(), VIRTIO_F_VERSION_1);
    assert_eq!(fs.tag(), "myfs");
    assert_eq!(fs.shared_dir(), dirs.shared.canonicalize().unwrap());

    let mut cfg = [0xffu8; 40];
    fs.read_config(0, &mut cfg);
    assert_eq!(&cfg[..4], b"myfs");
    assert!(cfg[4..36].iter().all(|&b| b == 0));
    assert_eq!(u32::from_le_bytes(cfg[36..40].try_into().unwrap()), 1);

    let mut b = [0xaau8; 8];
    fs.read_config(36, &mut b);
    assert_eq!(b, [1, 0, 0, 0, 0xaa, 0xaa, 0xaa, 0xaa]);
    let mut b = [0xaau8; 4];
    fs.read_config(40, &mut b);
    assert_eq!(b, [0xaa; 4]);
    fs.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0xaa; 4]);

    fs.write_config(0, b"evil");
    let mut t = [0u8; 4];
    fs.read_config(0, &mut t);
    assert_eq!(&t, b"myfs");

    let tag36 = "t".repeat(36);
    let fs = Fs::new(&tag36, &dirs.shared, FsOptions::default()).unwrap();
    let mut cfg = [0u8; 40];
    fs.read_config(0, &mut cfg);
    assert_eq!(&cfg[..36], tag36.as_bytes());
    assert_eq!(&cfg[36..], &[1, 0, 0, 0]);
}

#[test]
fn constructor_checks() {
    let dirs = TestDirs::new("ctor");
    let opts = FsOptions::default();
    for bad in ["", &"x".repeat(37), "a\0b"] {
        assert!(
            matches!(
                Fs::new(bad, &dirs.shared, opts),
                Err(FsError::InvalidTag { .. })
            ),
            "tag {bad:?}"
        );
    }
    assert!(matches!(
        Fs::new("t", dirs.base.join("missing"), opts),
        Err(FsError::SharedDir { .. })
    ));
    assert!(matches!(
        Fs::new("t", dirs.shared.join("hello.txt"), opts),
        Err(FsError::NotADirectory(_))
    ));
    // A symlink to a directory is resolved once, at construction.
    let link = dirs.base.join("link-to-shared");
    symlink(&dirs.shared, &link).unwrap();
    let fs = Fs::new("t", &link, opts).unwrap();
    assert_eq!(fs.shared_dir(), dirs.shared.canonicalize().unwrap());
    std::fs::remove_file(&link).unwrap();
    assert_eq!(
        FsOptions::default(),
        FsOptions {
            cache: CacheMode::Auto,
            xattr: false,
            writeback: false,
        }
    );
}

#[test]
fn construction_leaves_process_umask_alone() {
    let dirs = TestDirs::new("umask");
    let before = {
        let _g = UMASK_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: umask() only swaps the process file mode mask.
        unsafe { libc::umask(0o027) }
    };
    let fs = Fs::new("t", &dirs.shared, FsOptions::default()).unwrap();
    assert_eq!(current_umask(), 0o027, "import() must not leave umask 0");
    drop(fs);
    let _g = UMASK_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    // SAFETY: as above.
    unsafe { libc::umask(before) };
}

#[test]
fn activate_checks_queue_count_and_double_activation() {
    let mut h = Harness::new_inactive("activate", FsOptions::default());
    let mut queues = h.activated_queues();
    queues.pop();
    let err = h
        .dev()
        .activate(h.mem.clone(), h.irq.clone(), queues)
        .unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 2,
            got: 1
        }
    ));
    assert!(!h.dev().is_activated());
    h.activate();
    assert!(h.dev().is_activated());
    let queues = h.activated_queues();
    assert!(h
        .dev()
        .activate(h.mem.clone(), h.irq.clone(), queues)
        .is_err());
}

#[test]
fn init_lookup_getattr_read_on_the_worker_thread() {
    let mut h = Harness::new("basic");
    let init = h.init();
    assert_eq!((init.major, init.minor), (7, 33));
    let flags = FuseOptions::from_bits_truncate(u64::from(init.flags));
    assert!(flags.contains(FuseOptions::MAX_PAGES | FuseOptions::BIG_WRITES));
    assert_eq!(init.max_pages, 256);
    assert_eq!(init.max_write, 256 * 4096);
    // Options the guest offered but we did not configure stay off.
    assert!(!flags.contains(FuseOptions::WRITEBACK_CACHE));
    assert!(!flags.contains(FuseOptions::ZERO_MESSAGE_OPEN));
    assert!(!flags.contains(FuseOptions::ZERO_MESSAGE_OPENDIR));

    let e = h.lookup(ROOT_ID, "hello.txt").unwrap();
    assert!(e.nodeid > ROOT_ID);
    assert_eq!(e.attr.size, HELLO.len() as u64);
    assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFREG);
    // Cache Auto: 1 s timeouts.
    assert_eq!((e.entry_valid, e.attr_valid), (1, 1));
    let a = h.getattr(e.nodeid).unwrap();
    assert_eq!(a.attr.size, HELLO.len() as u64);
    assert_eq!(a.attr.ino, e.attr.ino);
    let fh = h.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(e.nodeid, fh, 0, 4096).unwrap(), HELLO);
    assert_eq!(h.read(e.nodeid, fh, 6, 4).unwrap(), &HELLO[6..10]);
    h.release(e.nodeid, fh).unwrap();

    let sub = h.lookup(ROOT_ID, "sub").unwrap();
    assert_eq!(sub.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    assert_eq!(h.read_file(sub.nodeid, "inner.txt"), b"inner");

    let dh = h.opendir(ROOT_ID).unwrap();
    let mut names = h.readdir_names(ROOT_ID, dh).unwrap();
    names.sort();
    assert_eq!(names, ["hello.txt", "sub"]);

    // All of it ran on the worker thread, which raised the interrupts.
    assert!(h.irq.used.load(Ordering::SeqCst) > 0);
    let threads = h.irq.threads.lock().unwrap().clone();
    assert!(threads.iter().all(|t| t == "fs-worker"), "{threads:?}");
    assert_eq!(h.dev().metrics().failed_requests, 0);
    assert_eq!(h.dev().metrics().malformed_chains, 0);
}

#[test]
fn cache_never_uses_zero_timeouts() {
    let opts = FsOptions {
        cache: CacheMode::Never,
        writeback: true,
        xattr: false,
    };
    let mut h = Harness::with_options("never", opts);
    let init = h.init();
    // writeback is dropped with cache=never
    assert!(!FuseOptions::from_bits_truncate(u64::from(init.flags))
        .contains(FuseOptions::WRITEBACK_CACHE));
    let e = h.lookup(ROOT_ID, "hello.txt").unwrap();
    assert_eq!((e.entry_valid, e.attr_valid), (0, 0));
    assert_eq!(h.read_file(ROOT_ID, "hello.txt"), HELLO);

    let opts = FsOptions {
        cache: CacheMode::Always,
        writeback: true,
        xattr: false,
    };
    let mut h = Harness::with_options("always", opts);
    let init = h.init();
    assert!(FuseOptions::from_bits_truncate(u64::from(init.flags))
        .contains(FuseOptions::WRITEBACK_CACHE));
    let e = h.lookup(ROOT_ID, "hello.txt").unwrap();
    assert_eq!(e.entry_valid, 86400);
}

#[test]
fn reset_stops_the_worker_and_reactivation_works() {
    let mut h = Harness::new("reset");
    h.init();
    assert_eq!(h.read_file(ROOT_ID, "hello.txt"), HELLO);
    assert!(h.dev().reset());
    assert!(!h.dev().is_activated());

    // Nobody serves the queue now.
    let e = InHeader {
        len: 40,
        opcode: Opcode::Getattr as u32,
        ..Default::default()
    };
    let ia = h.put(e.as_slice());
    let oa = h.alloc(256);
    h.add_chain(REQUEST_QUEUE, &[(ia, 40, false), (oa, 256, true)]);
    h.kick(REQUEST_QUEUE);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(h.used_idx(REQUEST_QUEUE), h.used_seen[REQUEST_QUEUE]);

    // The driver starts over with fresh rings.
    h.reset_rings();
    h.activate();
    h.init();
    assert_eq!(h.read_file(ROOT_ID, "hello.txt"), HELLO);
    assert!(h.dev().reset());
    // Reset of an inactive device is fine too.
    assert!(h.dev().reset());
}

#[test]
fn dotdot_at_the_root_is_the_root() {
    let mut h = Harness::new("dotdot");
    h.init();
    let root_ino = std::fs::metadata(&h.dirs.shared).unwrap().ino();

    let up = h.lookup(ROOT_ID, "..").unwrap();
    assert_eq!(up.nodeid, ROOT_ID);
    assert_eq!(up.attr.ino, root_ino);
    // Had ".." reached the parent, "outside" would be found there.
    assert_eq!(h.lookup(up.nodeid, "outside").unwrap_err(), libc::ENOENT);
    assert_eq!(h.lookup(up.nodeid, "shared").unwrap_err(), libc::ENOENT);
    let upup = h.lookup(up.nodeid, "..").unwrap();
    assert_eq!(upup.nodeid, ROOT_ID);

    assert_eq!(h.lookup(ROOT_ID, ".").unwrap().nodeid, ROOT_ID);

    // From a subdirectory, ".." goes up normally, and stops at the root.
    let sub = h.lookup(ROOT_ID, "sub").unwrap();
    let deeper = h.lookup(sub.nodeid, "deeper").unwrap();
    assert_eq!(h.lookup(deeper.nodeid, "..").unwrap().nodeid, sub.nodeid);
    assert_eq!(h.lookup(deeper.nodeid, ".").unwrap().nodeid, deeper.nodeid);
    let top = h.lookup(sub.nodeid, "..").unwrap();
    assert_eq!(top.nodeid, ROOT_ID);
    let above = h.lookup(top.nodeid, "..").unwrap();
    assert_eq!(above.nodeid, ROOT_ID);
    assert_eq!(h.lookup(above.nodeid, "outside").unwrap_err(), libc::ENOENT);

    // The directory listing of the root shows only the share.
    let dh = h.opendir(up.nodeid).unwrap();
    let names = h.readdir_names(up.nodeid, dh).unwrap();
    assert!(!names.iter().any(|n| n == "outside" || n == ".."));
    h.dirs.assert_outside_untouched();
}

#[test]
fn names_with_slashes_and_dots_are_refused() {
    let mut h = Harness::new("names");
    h.init();
    let sub = h.lookup(ROOT_ID, "sub").unwrap().nodeid;
    let einval = Err(libc::EINVAL);

    for name in [
        "sub/inner.txt",
        "../outside",
        "../outside/secret",
        "/etc/passwd",
        "",
    ] {
        assert_eq!(
            h.lookup(ROOT_ID, name).map(|e| e.nodeid),
            einval,
            "{name:?}"
        );
    }
    assert_eq!(h.lookup(sub, "../../outside").map(|e| e.nodeid), einval);
    for name in ["x/y", "..", ".", "../pwned", ""] {
        assert_eq!(h.mkdir(ROOT_ID, name).map(|e| e.nodeid), einval, "{name:?}");
        assert_eq!(
            h.create(ROOT_ID, name, libc::O_RDWR, 0o644)
                .map(|e| e.0.nodeid),
            einval,
            "{name:?}"
        );
        assert_eq!(
            h.mknod(ROOT_ID, name, libc::S_IFIFO | 0o644, 0)
                .map(|e| e.nodeid),
            einval,
            "{name:?}"
        );
        assert_eq!(
            h.symlink(ROOT_ID, name, "target").map(|e| e.nodeid),
            einval,
            "{name:?}"
        );
    }
    assert_eq!(h.unlink(ROOT_ID, "../outside/secret"), Err(libc::EINVAL));
    assert_eq!(h.unlink(sub, "../hello.txt"), Err(libc::EINVAL));
    assert_eq!(h.rmdir(ROOT_ID, ".."), Err(libc::EINVAL));
    assert_eq!(h.rmdir(sub, "."), Err(libc::EINVAL));

    assert!(h.dirs.shared.join("hello.txt").exists());
    assert!(!h.dirs.base.join("pwned").exists());
    h.dirs.assert_outside_untouched();
}

#[test]
fn symlinks_are_text_and_never_followed_by_the_server() {
    let mut h = Harness::new("symlinks");
    h.init();
    let outside_secret = h.dirs.outside.join("secret");
    let abs_secret = outside_secret.to_str().unwrap().to_owned();
    symlink("/etc/passwd", h.dirs.shared.join("passwd")).unwrap();
    symlink("../outside/secret", h.dirs.shared.join("rel")).unwrap();
    symlink(&abs_secret, h.dirs.shared.join("abs")).unwrap();
    symlink("../outside", h.dirs.shared.join("dirlink")).unwrap();

    for (name, target) in [
        ("passwd", "/etc/passwd"),
        ("rel", "../outside/secret"),
        ("abs", abs_secret.as_str()),
        ("dirlink", "../outside"),
    ] {
        let e = h.lookup(ROOT_ID, name).unwrap();
        // The entry is the link itself (lstat), not its target.
        assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFLNK, "{name}");
        assert_eq!(e.attr.size, target.len() as u64, "{name}");
        let a = h.getattr(e.nodeid).unwrap();
        assert_eq!(a.attr.mode & libc::S_IFMT, libc::S_IFLNK, "{name}");
        assert_eq!(h.readlink(e.nodeid).unwrap(), target.as_bytes(), "{name}");
        // Opening the link from the server side would follow it: refused.
        for flags in [
            libc::O_RDONLY,
            libc::O_RDWR | libc::O_TRUNC,
            libc::O_RDONLY | libc::O_NOFOLLOW,
            libc::O_RDONLY | libc::O_PATH,
        ] {
            assert!(h.open(e.nodeid, flags).is_err(), "{name} {flags:#x}");
        }
        assert!(h.opendir(e.nodeid).is_err(), "{name}");
        // Truncating by inode (no fh) must not go through the link either.
        assert!(h.truncate(e.nodeid).is_err(), "{name}");
    }

    // Lookups *through* a directory symlink do not resolve it.
    let dl = h.lookup(ROOT_ID, "dirlink").unwrap();
    assert_eq!(h.lookup(dl.nodeid, "secret").unwrap_err(), libc::ENOTDIR);
    assert!(h.create(dl.nodeid, "pwned", libc::O_RDWR, 0o644).is_err());
    assert!(h.mkdir(dl.nodeid, "pwned").is_err());

    // CREATE over an existing link (no O_EXCL) opens neither link nor target.
    assert!(h
        .create(ROOT_ID, "rel", libc::O_RDWR | libc::O_TRUNC, 0o644)
        .is_err());
    assert!(h
        .create(ROOT_ID, "abs", libc::O_WRONLY | libc::O_APPEND, 0o644)
        .is_err());

    // A link the guest makes is stored as text and equally inert.
    let mine = h.symlink(ROOT_ID, "mine", "../outside/secret").unwrap();
    assert_eq!(mine.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(
        std::fs::read_link(h.dirs.shared.join("mine")).unwrap(),
        Path::new("../outside/secret")
    );
    assert_eq!(h.readlink(mine.nodeid).unwrap(), b"../outside/secret");
    assert!(h.open(mine.nodeid, libc::O_RDWR).is_err());

    h.dirs.assert_outside_untouched();
}

#[test]
fn forged_nodeids_and_handles_are_refused() {
    let mut h = Harness::new("forged");
    h.init();
    let forged = 0xdead_beef_u64;
    assert_eq!(h.getattr(forged).unwrap_err(), libc::EBADF);
    assert_eq!(h.getattr(0).unwrap_err(), libc::EBADF);
    assert_eq!(h.getattr(u64::MAX).unwrap_err(), libc::EBADF);
    assert_eq!(h.lookup(forged, "secret").unwrap_err(), libc::EBADF);
    assert_eq!(h.lookup(forged, "..").unwrap_err(), libc::EBADF);
    assert_eq!(h.open(forged, libc::O_RDONLY).unwrap_err(), libc::EBADF);
    assert_eq!(h.opendir(forged).unwrap_err(), libc::EBADF);
    assert_eq!(h.readlink(forged).unwrap_err(), libc::EBADF);
    assert_eq!(h.truncate(forged).unwrap_err(), libc::EBADF);
    assert_eq!(h.mkdir(forged, "x").unwrap_err(), libc::EBADF);
    assert_eq!(
        h.create(forged, "x", libc::O_RDWR, 0o644).unwrap_err(),
        libc::EBADF
    );

    let hello = h.lookup(ROOT_ID, "hello.txt").unwrap().nodeid;
    let inner = {
        let sub = h.lookup(ROOT_ID, "sub").unwrap().nodeid;
        h.lookup(sub, "inner.txt").unwrap().nodeid
    };
    let fh = h.open(hello, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(hello, fh + 1000, 0, 64).unwrap_err(), libc::EBADF);
    assert_eq!(h.read(hello, u64::MAX, 0, 64).unwrap_err(), libc::EBADF);
    // A real handle used with another inode.
    assert_eq!(h.read(inner, fh, 0, 64).unwrap_err(), libc::EBADF);
    assert_eq!(h.write(hello, fh + 1000, 0, b"x").unwrap_err(), libc::EBADF);
    assert_eq!(h.release(hello, fh + 1000).unwrap_err(), libc::EBADF);
    assert_eq!(h.release(inner, fh).unwrap_err(), libc::EBADF);
    assert_eq!(h.readdir_names(ROOT_ID, 4242).unwrap_err(), libc::EBADF);
    assert_eq!(h.read(hello, fh, 0, 64).unwrap(), HELLO);
    h.release(hello, fh).unwrap();
    // Released handles are gone.
    assert_eq!(h.read(hello, fh, 0, 64).unwrap_err(), libc::EBADF);

    // FORGET of invented and real nodeids (hiprio queue, no reply), and of
    // the root, which stays.
    for node in [forged, 0, hello, ROOT_ID] {
        let a = ForgetIn { nlookup: 1 << 40 };
        let hdr = h.header(Opcode::Forget as u32, node, size_of::<ForgetIn>());
        let req = [hdr.as_slice(), a.as_slice()].concat();
        let ia = h.put(&req);
        assert_eq!(h.send(HIPRIO_QUEUE, &[(ia, req.len() as u32, false)]), 0);
    }
    assert_eq!(h.getattr(hello).unwrap_err(), libc::EBADF);
    assert_eq!(h.read_file(ROOT_ID, "hello.txt"), HELLO);
    h.dirs.assert_outside_untouched();
}

#[test]
fn rename_and_link_into_forged_or_escaping_targets_are_refused() {
    let mut h = Harness::new("rename");
    h.init();
    let forged = 0x1234_5678;
    let hello = h.lookup(ROOT_ID, "hello.txt").unwrap().nodeid;
    let sub = h.lookup(ROOT_ID, "sub").unwrap().nodeid;

    assert_eq!(
        h.rename(ROOT_ID, "hello.txt", forged, "x"),
        Err(libc::EBADF)
    );
    assert_eq!(h.rename(forged, "secret", ROOT_ID, "x"), Err(libc::EBADF));
    for new in ["../escaped", "..", ".", "a/b", "/tmp/escaped"] {
        assert_eq!(
            h.rename(ROOT_ID, "hello.txt", ROOT_ID, new),
            Err(libc::EINVAL),
            "{new:?}"
        );
    }
    assert_eq!(
        h.rename(ROOT_ID, "../outside/secret", ROOT_ID, "stolen"),
        Err(libc::EINVAL)
    );
    assert_eq!(h.rename(sub, "..", ROOT_ID, "x"), Err(libc::EINVAL));

    assert_eq!(h.link(hello, forged, "x").unwrap_err(), libc::EBADF);
    assert_eq!(h.link(forged, ROOT_ID, "x").unwrap_err(), libc::EBADF);
    assert_eq!(h.link(hello, ROOT_ID, "../x").unwrap_err(), libc::EINVAL);
    assert_eq!(h.link(hello, ROOT_ID, "..").unwrap_err(), libc::EINVAL);
    assert!(h.dirs.shared.join("hello.txt").exists());
    assert!(!h.dirs.base.join("escaped").exists());
    assert!(!h.dirs.base.join("x").exists());

    // Inside the share both work.
    h.rename(ROOT_ID, "hello.txt", sub, "moved.txt").unwrap();
    assert_eq!(
        std::fs::read(h.dirs.shared.join("sub/moved.txt")).unwrap(),
        HELLO
    );
    if is_root() {
        // linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH on older kernels.
        let l = h.link(hello, ROOT_ID, "hardlink").unwrap();
        assert_eq!(l.nodeid, hello);
        assert_eq!(
            std::fs::read(h.dirs.shared.join("hardlink")).unwrap(),
            HELLO
        );
    }
    h.dirs.assert_outside_untouched();
}

#[test]
fn device_nodes_are_refused() {
    let mut h = Harness::new("mknod");
    h.init();
    let blk = libc::makedev(8, 0) as u32;
    let mem = libc::makedev(1, 1) as u32;
    assert_eq!(
        h.mknod(ROOT_ID, "sda", libc::S_IFBLK | 0o666, blk)
            .unwrap_err(),
        libc::EPERM
    );
    assert_eq!(
        h.mknod(ROOT_ID, "mem", libc::S_IFCHR | 0o666, mem)
            .unwrap_err(),
        libc::EPERM
    );
    assert_eq!(
        h.mknod(ROOT_ID, "dir", libc::S_IFDIR | 0o755, 0)
            .unwrap_err(),
        libc::EPERM
    );
    assert!(!h.dirs.shared.join("sda").exists());
    assert!(!h.dirs.shared.join("mem").exists());

    let fifo = h.mknod(ROOT_ID, "fifo", libc::S_IFIFO | 0o600, 0).unwrap();
    assert_eq!(fifo.attr.mode & libc::S_IFMT, libc::S_IFIFO);
    let meta = std::fs::symlink_metadata(h.dirs.shared.join("fifo")).unwrap();
    assert!(meta.file_type().is_fifo());
    // Not openable from the server side (it would block the worker).
    assert!(h.open(fifo.nodeid, libc::O_RDONLY).is_err());
}

#[test]
fn create_and_write_land_in_the_shared_dir() {
    let mut h = Harness::new("write");
    h.init();
    let (e, o) = h.create(ROOT_ID, "new.txt", libc::O_RDWR, 0o666).unwrap();
    assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFREG);
    let data = b"written by the guest\n";
    assert_eq!(h.write(e.nodeid, o.fh, 0, data).unwrap(), data.len() as u32);
    assert_eq!(h.write(e.nodeid, o.fh, 8, b"BY").unwrap(), 2);
    h.release(e.nodeid, o.fh).unwrap();
    let host = h.dirs.shared.join("new.txt");
    assert_eq!(std::fs::read(&host).unwrap(), b"written BY the guest\n");
    // The guest's mode, not filtered by the VMM's umask (the worker has its
    // own, 0; the guest applies its umask itself).
    let mode = std::fs::metadata(&host).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o666);

    // A big write spread over several readable descriptors, read back
    // through several writable ones.
    let (e, o) = h.create(ROOT_ID, "big.bin", libc::O_RDWR, 0o644).unwrap();
    let big: Vec<u8> = (0..300 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let wi = WriteIn {
        fh: o.fh,
        offset: 0,
        size: big.len() as u32,
        ..Default::default()
    };
    let hdr = h.header(
        Opcode::Write as u32,
        e.nodeid,
        size_of::<WriteIn>() + big.len(),
    );
    let head = [hdr.as_slice(), wi.as_slice()].concat();
    let ha = h.put(&head);
    let (p1, p2) = big.split_at(100_000);
    let a1 = h.put(p1);
    let a2 = h.put(p2);
    let oa = h.alloc(64);
    let used = h.send(
        REQUEST_QUEUE,
        &[
            (ha, head.len() as u32, false),
            (a1, p1.len() as u32, false),
            (a2, p2.len() as u32, false),
            (oa, 64, true),
        ],
    );
    let r = h.read_reply(oa, used);
    assert_eq!(obj::<WriteOut>(r.result().unwrap()).size, big.len() as u32);
    assert_eq!(std::fs::read(h.dirs.shared.join("big.bin")).unwrap(), big);

    let ri = ReadIn {
        fh: o.fh,
        offset: 0,
        size: big.len() as u32,
        ..Default::default()
    };
    let hdr = h.header(Opcode::Read as u32, e.nodeid, size_of::<ReadIn>());
    let req = [hdr.as_slice(), ri.as_slice()].concat();
    let ia = h.put(&req);
    let b1 = h.alloc(16 + 4096);
    let b2 = h.alloc(big.len() as u64);
    let used = h.send(
        REQUEST_QUEUE,
        &[
            (ia, req.len() as u32, false),
            (b1, 16 + 4096, true),
            (b2, big.len() as u32 - 4096, true),
        ],
    );
    assert_eq!(used as usize, 16 + big.len());
    let mut got = vec![0u8; big.len()];
    h.mem
        .read_slice(&mut got[..4096], GuestAddress(b1 + 16))
        .unwrap();
    h.mem
        .read_slice(&mut got[4096..], GuestAddress(b2))
        .unwrap();
    assert_eq!(got, big);
    h.release(e.nodeid, o.fh).unwrap();

    // Directories and unlink work too.
    let d = h.mkdir(ROOT_ID, "newdir").unwrap();
    assert!(h.dirs.shared.join("newdir").is_dir());
    h.create(d.nodeid, "f", libc::O_WRONLY, 0o600).unwrap();
    assert!(h.dirs.shared.join("newdir/f").is_file());
    h.unlink(d.nodeid, "f").unwrap();
    h.rmdir(ROOT_ID, "newdir").unwrap();
    assert!(!h.dirs.shared.join("newdir").exists());
    h.dirs.assert_outside_untouched();
}

#[test]
fn malformed_chains_are_consumed_and_the_device_keeps_working() {
    let mut h = Harness::new("malformed");
    h.init();
    let q = REQUEST_QUEUE;
    let getattr = |h: &mut Harness, len_delta: i64| -> (InHeader, Vec<u8>) {
        let a = GetattrIn::default();
        let mut hdr = h.header(Opcode::Getattr as u32, ROOT_ID, size_of::<GetattrIn>());
        hdr.len = (i64::from(hdr.len) + len_delta) as u32;
        (hdr, [hdr.as_slice(), a.as_slice()].concat())
    };
    let expect_err = |h: &mut Harness, used: u32, oa: u64, unique: u64, errno: i32| {
        assert_eq!(used, 16);
        let r = h.read_reply(oa, used);
        assert_eq!(r.hdr.unique, unique);
        assert_eq!(r.result().unwrap_err(), errno);
    };
    let (_, good) = getattr(&mut h, 0);

    // 1. Request outside guest memory.
    let oa = h.alloc(256);
    assert_eq!(
        h.send(q, &[(MEM_SIZE + 0x1000, 56, false), (oa, 256, true)]),
        0
    );
    // 2. Header straddling the end of guest memory.
    assert_eq!(h.send(q, &[(MEM_SIZE - 20, 56, false), (oa, 256, true)]), 0);
    // 3. Header in a write-only descriptor: no readable part at all.
    let ia = h.put(&good);
    assert_eq!(h.send(q, &[(ia, 56, true), (oa, 256, true)]), 0);
    // 4. Truncated header.
    let ia = h.put(&good);
    assert_eq!(h.send(q, &[(ia, 20, false), (oa, 256, true)]), 0);
    // 5. Huge descriptor length.
    let ia = h.put(&good);
    assert_eq!(h.send(q, &[(ia, u32::MAX, false), (oa, 256, true)]), 0);
    // 6. Reply buffer outside guest memory.
    let ia = h.put(&good);
    assert_eq!(
        h.send(q, &[(ia, 56, false), (u64::MAX - 100, 256, true)]),
        0
    );
    // 7. Indirect descriptor with a bogus table length.
    let ia = h.put(&good);
    let head = h.next_desc[q];
    h.next_desc[q] += 1;
    h.write_desc(q, head, ia, 17, VRING_DESC_F_INDIRECT as u16, 0);
    h.publish(q, head);
    h.kick(q);
    h.wait_all_used(q);
    assert_eq!(h.used_elem(q, h.used_seen[q]), (u32::from(head), 0));
    h.used_seen[q] += 1;
    // 8. `next` pointing outside the descriptor table: the chain ends there
    // (header only, nowhere to reply).
    let ia = h.put(&good);
    let head = h.next_desc[q];
    h.next_desc[q] += 1;
    h.write_desc(q, head, ia, 56, VRING_DESC_F_NEXT as u16, QSIZE + 7);
    h.publish(q, head);
    h.kick(q);
    h.wait_all_used(q);
    assert_eq!(h.used_elem(q, h.used_seen[q]), (u32::from(head), 0));
    h.used_seen[q] += 1;
    let m = h.dev().metrics();
    assert_eq!(m.malformed_chains, 7, "{m:?}");

    // 9. Bogus opcode: ENOSYS.
    let r = h.call_with(9999, ROOT_ID, &[], 256);
    assert_eq!(r.result().unwrap_err(), libc::ENOSYS);
    // 10. in_header.len far beyond the data.
    let (hdr, req) = getattr(&mut h, i64::from(u32::MAX) - 56);
    let ia = h.put(&req);
    let used = h.send(q, &[(ia, req.len() as u32, false), (oa, 256, true)]);
    expect_err(&mut h, used, oa, hdr.unique, libc::ENOMEM);
    // 11. in_header.len shorter than the header (GETATTR does not use it).
    let (hdr, req) = getattr(&mut h, -50);
    let ia = h.put(&req);
    let used = h.send(q, &[(ia, req.len() as u32, false), (oa, 256, true)]);
    assert!(used == 0 || h.read_reply(oa, used).hdr.unique == hdr.unique);
    // 12. GETATTR without its argument struct: decode error, no server
    // reply; the device answers EINVAL.
    let hdr = h.header(Opcode::Getattr as u32, ROOT_ID, 0);
    let ia = h.put(hdr.as_slice());
    let used = h.send(q, &[(ia, 40, false), (oa, 256, true)]);
    expect_err(&mut h, used, oa, hdr.unique, libc::EINVAL);
    // 13. LOOKUP name without a NUL: the server answers EINVAL and fails.
    let hdr = h.header(Opcode::Lookup as u32, ROOT_ID, 5);
    let req = [hdr.as_slice(), b"hello"].concat();
    let ia = h.put(&req);
    let used = h.send(q, &[(ia, req.len() as u32, false), (oa, 256, true)]);
    expect_err(&mut h, used, oa, hdr.unique, libc::EINVAL);
    // 14. Reply buffer too small for even an error.
    let ia = h.put(&good);
    let small = h.alloc(8);
    assert_eq!(h.send(q, &[(ia, 56, false), (small, 8, true)]), 0);
    // 15. Reply buffer too small for the attributes: an error fits.
    let (hdr, req) = getattr(&mut h, 0);
    let ia = h.put(&req);
    let used = h.send(q, &[(ia, 56, false), (oa, 20, true)]);
    expect_err(&mut h, used, oa, hdr.unique, libc::EIO);
    // 16. No reply buffer at all.
    let ia = h.put(&good);
    assert_eq!(h.send(q, &[(ia, 56, false)]), 0);
    // 17. Readable part above the limit (overlapping 1 MiB descriptors).
    let (hdr, req) = getattr(&mut h, 0);
    let ia = h.put(&req);
    let big = h.alloc(1 << 20);
    let used = h.send(
        q,
        &[
            (ia, 56, false),
            (big, 1 << 20, false),
            (big, 1 << 20, false),
            (oa, 256, true),
        ],
    );
    expect_err(&mut h, used, oa, hdr.unique, libc::ENOMEM);
    // 18. Writable part above the limit (a READDIR would size a buffer by it).
    let (hdr, req) = getattr(&mut h, 0);
    let ia = h.put(&req);
    let n = (MAX_CHAIN_BYTES / (1 << 20) + 1) as usize;
    let mut descs = vec![(ia, 56, false), (oa, 256, true)];
    for _ in 0..n {
        descs.push((big, 1 << 20, true));
    }
    let used = h.send(q, &descs);
    expect_err(&mut h, used, oa, hdr.unique, libc::ENOMEM);
    // 19. BATCH_FORGET claiming a huge count (no reply expected).
    let a = BatchForgetIn {
        count: u32::MAX,
        dummy: 0,
    };
    let hdr = h.header(Opcode::BatchForget as u32, 0, size_of::<BatchForgetIn>());
    let req = [hdr.as_slice(), a.as_slice()].concat();
    let ia = h.put(&req);
    assert_eq!(h.send(HIPRIO_QUEUE, &[(ia, req.len() as u32, false)]), 0);
    // 20. READDIR asking for 4 GiB with a small buffer.
    let dh = h.opendir(ROOT_ID).unwrap();
    let a = ReadIn {
        fh: dh,
        size: u32::MAX,
        ..Default::default()
    };
    let r = h.call(Opcode::Readdir, ROOT_ID, &[a.as_slice()]);
    assert_eq!(r.result().unwrap_err(), libc::ENOMEM);

    let m = h.dev().metrics();
    assert_eq!(m.malformed_chains, 7, "{m:?}");
    assert_eq!(m.oversized_chains, 2, "{m:?}");
    assert!(m.failed_requests >= 4, "{m:?}");

    // Still fully functional.
    assert_eq!(h.read_file(ROOT_ID, "hello.txt"), HELLO);
    let (e, o) = h.create(ROOT_ID, "after.txt", libc::O_RDWR, 0o644).unwrap();
    h.write(e.nodeid, o.fh, 0, b"ok").unwrap();
    assert_eq!(
        std::fs::read(h.dirs.shared.join("after.txt")).unwrap(),
        b"ok"
    );
}

#[test]
fn impossible_avail_index_is_ignored_until_fixed() {
    let mut h = Harness::new("availidx");
    h.init();
    let q = REQUEST_QUEUE;
    let good = h.avail_idx(q);
    // More chains "available" than the ring holds.
    h.write_u16(h.rings[q].avail + 2, good.wrapping_add(QSIZE + 5));
    h.kick(q);
    let deadline = Instant::now() + WAIT;
    while h.dev().metrics().bad_avail_index == 0 {
        assert!(Instant::now() < deadline, "bad avail index not noticed");
        std::thread::sleep(Duration::from_millis(1));
    }
    h.kick(q);
    while h.dev().metrics().bad_avail_index < 2 {
        assert!(Instant::now() < deadline, "second kick not handled");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(h.used_idx(q), good, "nothing consumed");
    // The driver repairs its index: business as usual.
    h.write_u16(h.rings[q].avail + 2, good);
    assert_eq!(h.read_file(ROOT_ID, "hello.txt"), HELLO);
    assert_eq!(h.dev().metrics().malformed_chains, 0);
}

/// Deterministic xorshift PRNG for the garbage test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_garbage_from_the_guest() {
    let mut h = Harness::new("garbage");
    h.init();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Every opcode but SETATTR (which could make the root unusable for the
    // final check) and INIT/DESTROY, plus invalid ones.
    let ops: Vec<u32> = (1..=50)
        .filter(|&o| o != Opcode::Setattr as u32 && o != 26 && o != 38)
        .chain([0, 51, 4096, u32::MAX])
        .collect();
    for _round in 0..20 {
        for q in [HIPRIO_QUEUE, REQUEST_QUEUE] {
            for _ in 0..16 {
                let ha = h.alloc(512);
                let body: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
                let mut hdr = h.header(
                    ops[rng.below(ops.len() as u64) as usize],
                    match rng.below(4) {
                        0 => ROOT_ID,
                        1 => rng.below(8),
                        _ => rng.next(),
                    },
                    body.len(),
                );
                hdr.len = match rng.below(4) {
                    0 => hdr.len,
                    1 => rng.below(512) as u32,
                    _ => rng.next() as u32,
                };
                hdr.uid = rng.below(2) as u32;
                let req = [hdr.as_slice(), &body].concat();
                h.mem.write_slice(&req, GuestAddress(ha)).unwrap();
                // Random descriptors: address, length, flags (incl. INDIRECT)
                // and next index all arbitrary, but never on the rings.
                let n = 1 + rng.below(4) as u16;
                let start = rng.below(u64::from(QSIZE)) as u16;
                for i in 0..n {
                    let addr = match rng.below(5) {
                        0 => rng.next(),
                        1 => MEM_SIZE - rng.below(64),
                        _ => ha,
                    };
                    let len = match rng.below(3) {
                        0 => rng.next() as u32,
                        1 => rng.below(128) as u32,
                        _ => 40 + rng.below(472) as u32,
                    };
                    let flags = rng.below(8) as u16; // NEXT | WRITE | INDIRECT
                    let next = rng.below(u64::from(QSIZE) + 2) as u16;
                    h.write_desc(q, start + i, addr, len, flags, next);
                }
                h.publish(q, start);
            }
            h.kick(q);
        }
        for q in [HIPRIO_QUEUE, REQUEST_QUEUE] {
            h.wait_all_used(q);
            h.used_seen[q] = h.used_idx(q);
        }
    }
    let m = h.dev().metrics();
    assert!(m.malformed_chains > 0, "{m:?}");
    assert!(m.requests >= 640, "{m:?}");

    // The share still works and nothing leaked out of it.
    h.next_desc = [0; NUM_QUEUES];
    h.init();
    let (e, o) = h
        .create(ROOT_ID, "still-alive", libc::O_RDWR, 0o644)
        .unwrap();
    h.write(e.nodeid, o.fh, 0, b"alive").unwrap();
    assert_eq!(h.read(e.nodeid, o.fh, 0, 16).unwrap(), b"alive");
    h.dirs.assert_outside_untouched();
}

/// F7: the guest grows a descriptor after the device read the header (a
/// second vCPU racing the walks). The size limit holds for the reader and
/// writer the server gets, so the request is refused, not served with a
/// writable part above the limit.
#[test]
fn chain_size_is_checked_on_what_the_server_gets() {
    use std::sync::atomic::AtomicBool;
    use vm_memory::GuestMemory;

    let mut h = Harness::new("double-fetch");
    h.init();
    let q = REQUEST_QUEUE;
    let a = GetattrIn::default();
    let hdr = h.header(Opcode::Getattr as u32, ROOT_ID, size_of::<GetattrIn>());
    let req = [hdr.as_slice(), a.as_slice()].concat();
    let ia = h.put(&req);
    let oa = h.alloc(256);
    // The writable descriptor of the next chain is the second slot of it.
    let start = if h.next_desc[q] + 2 > QSIZE {
        0
    } else {
        h.next_desc[q]
    };
    let daddr = h.rings[q].desc + 16 * u64::from((start + 1) % QSIZE);
    let big = MAX_CHAIN_BYTES as u32 + 0x1000;
    let armed = Arc::new(AtomicBool::new(true));
    let ours = h.mem.get_host_address(GuestAddress(0)).unwrap() as usize;
    {
        let armed = armed.clone();
        super::request::tests_hook::BETWEEN_WALKS
            .lock()
            .unwrap()
            .push(Box::new(move |mem| {
                let mine = mem
                    .get_host_address(GuestAddress(0))
                    .is_ok_and(|p| p as usize == ours);
                if mine && armed.swap(false, Ordering::SeqCst) {
                    let d = RawDescriptor::from(SplitDescriptor::new(
                        oa,
                        big,
                        VRING_DESC_F_WRITE as u16,
                        0,
                    ));
                    mem.write_obj(d, GuestAddress(daddr)).unwrap();
                }
            }));
    }
    let used = h.send(q, &[(ia, req.len() as u32, false), (oa, 256, true)]);
    assert!(!armed.load(Ordering::SeqCst), "the hook did not run");
    let r = h.read_reply(oa, used);
    assert_eq!(r.hdr.unique, hdr.unique);
    assert_eq!(r.result().unwrap_err(), libc::ENOMEM);
    assert_eq!(h.dev().metrics().oversized_chains, 1);
    // The device goes on.
    assert_eq!(h.read_file(ROOT_ID, "hello.txt"), HELLO);
}

fn forget(h: &mut Harness, node: u64, nlookup: u64) {
    let a = ForgetIn { nlookup };
    let hdr = h.header(Opcode::Forget as u32, node, size_of::<ForgetIn>());
    let req = [hdr.as_slice(), a.as_slice()].concat();
    let ia = h.put(&req);
    assert_eq!(h.send(HIPRIO_QUEUE, &[(ia, req.len() as u32, false)]), 0);
}

/// Review F13: inodes the guest looked up and did not forget, and handles
/// it did not release, pin one host fd each; beyond the bound the guest
/// gets ENFILE (the VMM's fd table, shared with vsock `accept4`, stays
/// usable), and FORGET/RELEASE make room again.
#[test]
fn lookups_and_opens_beyond_the_fd_budget_get_enfile_until_forgotten() {
    const MAX: usize = 8;
    let mut h = Harness::with_fd_budget("fd-budget", MAX);
    for i in 0..20 {
        std::fs::write(h.dirs.shared.join(format!("f{i}")), b"x").unwrap();
    }
    h.init();
    let mut nodes = Vec::new();
    for i in 0..MAX {
        nodes.push(h.lookup(ROOT_ID, &format!("f{i}")).unwrap().nodeid);
    }
    // Without FORGET, many more LOOKUPs: all refused.
    for round in 0..1000 {
        let i = MAX + round % 12;
        assert_eq!(
            h.lookup(ROOT_ID, &format!("f{i}")).unwrap_err(),
            libc::ENFILE,
            "f{i}"
        );
    }
    // What the guest already holds stays usable, and the root always works.
    assert_eq!(h.lookup(ROOT_ID, "f0").unwrap().nodeid, nodes[0]);
    assert!(h.lookup(ROOT_ID, ".").is_ok());
    assert_eq!(h.open(nodes[0], libc::O_RDONLY).unwrap_err(), libc::ENFILE);
    assert_eq!(h.opendir(ROOT_ID).unwrap_err(), libc::ENFILE);
    // Creating is refused before anything is created.
    assert_eq!(h.mkdir(ROOT_ID, "newdir").unwrap_err(), libc::ENFILE);
    assert!(!h.dirs.shared.join("newdir").exists());
    assert_eq!(
        h.create(ROOT_ID, "newfile", libc::O_RDWR, 0o644)
            .unwrap_err(),
        libc::ENFILE
    );
    assert!(!h.dirs.shared.join("newfile").exists());

    // f0 was looked up twice: one FORGET of 1 is not enough.
    forget(&mut h, nodes[0], 1);
    assert_eq!(h.lookup(ROOT_ID, "f8").unwrap_err(), libc::ENFILE);
    forget(&mut h, nodes[0], 1);
    let f8 = h.lookup(ROOT_ID, "f8").unwrap().nodeid;
    assert_eq!(h.lookup(ROOT_ID, "f9").unwrap_err(), libc::ENFILE);
    // An open handle takes a slot, and its RELEASE gives it back.
    forget(&mut h, f8, 1);
    let fh = h.open(nodes[1], libc::O_RDONLY).unwrap();
    assert_eq!(h.lookup(ROOT_ID, "f9").unwrap_err(), libc::ENFILE);
    h.release(nodes[1], fh).unwrap();
    assert!(h.lookup(ROOT_ID, "f9").is_ok());
    // Forged FORGETs free nothing.
    forget(&mut h, 0xdead_beef, 1 << 40);
    assert_eq!(h.lookup(ROOT_ID, "f10").unwrap_err(), libc::ENFILE);
    h.dirs.assert_outside_untouched();
}

/// READDIRPLUS hands out lookups as well: bounded the same way.
#[test]
fn readdirplus_respects_the_fd_budget() {
    const MAX: usize = 4;
    let mut h = Harness::with_fd_budget("fd-budget-plus", MAX);
    for i in 0..20 {
        std::fs::write(h.dirs.shared.join(format!("f{i}")), b"x").unwrap();
    }
    h.init();
    let dh = h.opendir(ROOT_ID).unwrap();
    let mut offset = 0;
    let mut seen = 0;
    let mut refused = false;
    for _ in 0..100 {
        let a = ReadIn {
            fh: dh,
            offset,
            size: 4096,
            ..Default::default()
        };
        let r = h.call(Opcode::Readdirplus, ROOT_ID, &[a.as_slice()]);
        match r.result() {
            Err(e) => {
                assert_eq!(e, libc::ENFILE);
                refused = true;
                break;
            }
            Ok([]) => break,
            Ok(data) => {
                // fuse_direntplus: entry_out (128 bytes), then dirent
                // (ino, off, namelen, type) and the name padded to 8.
                let mut p = 0;
                while p + 152 <= data.len() {
                    let namelen =
                        u32::from_ne_bytes(data[p + 144..p + 148].try_into().unwrap()) as usize;
                    offset = u64::from_ne_bytes(data[p + 136..p + 144].try_into().unwrap());
                    seen += 1;
                    p += (152 + namelen + 7) & !7;
                }
            }
        }
    }
    assert!(refused, "READDIRPLUS never refused ({seen} entries)");
    // One handle (the dir) plus at most MAX - 1 inodes.
    assert!(seen <= MAX + 2, "{seen} entries handed out");
}

/// Found by fuzz/fs_request (see fuzz/RESULTS.md). fuse-backend-rs 0.14
/// `PassthroughFs::read`/`write` (src/passthrough/sync_io.rs:672-674 and
/// 699-701) wrap the handle's fd in a `File` and return early when
/// `fcntl(F_SETFL, <flags from the guest's ReadIn/WriteIn>)` fails, before the
/// `File` is put in a `ManuallyDrop`: the `File` closes the handle's fd. The
/// handle keeps the number; the next open reuses it and RELEASE (or dropping
/// the device) closes it again: fd confusion and a double close of whatever
/// the VMM then holds under that number. `O_DIRECT` on a directory handle
/// (EINVAL) is the easiest trigger; `O_DIRECT` on a file system without direct
/// I/O, or clearing `O_APPEND` on an append-only file (EPERM), work too.
/// ConfinedFs passes PassthroughFs the handle's own flags, so the `fcntl`
/// never runs; READ on a directory handle is EBADF.
#[test]
fn read_with_flags_fcntl_refuses_keeps_the_handle_fd() {
    let mut h = Harness::new("setfl");
    h.init();
    let fh = h.opendir(ROOT_ID).unwrap();
    let a = ReadIn {
        fh,
        size: 1024,
        flags: libc::O_DIRECT as u32,
        ..Default::default()
    };
    let r = h.call_with(Opcode::Read as u32, ROOT_ID, &[a.as_slice()], 1024 + 16);
    assert!(r.result().is_err(), "READ on a directory handle succeeded");
    let names = h.readdir_names(ROOT_ID, fh);
    if !names
        .as_ref()
        .is_ok_and(|n| n.iter().any(|n| n == "hello.txt"))
    {
        // The handle's fd is gone: dropping the device would close that
        // number a second time, whatever owns it by then. Leak it instead.
        std::mem::forget(h);
        panic!("READ with O_DIRECT closed the directory handle's fd: READDIR gives {names:?}");
    }
    h.dirs.assert_outside_untouched();
}

/// The same on a file handle: a READ carrying flags the host cannot set
/// (`O_DIRECT` where the host file system may refuse it) or that differ
/// from the open's still reads through the handle, and the handle keeps
/// its fd for the next READ.
#[test]
fn read_flags_from_the_guest_never_reach_fcntl() {
    let mut h = Harness::new("setfl-file");
    h.init();
    let e = h.lookup(ROOT_ID, "hello.txt").unwrap();
    let fh = h.open(e.nodeid, libc::O_RDONLY).unwrap();
    for flags in [libc::O_DIRECT, libc::O_APPEND | libc::O_NONBLOCK, -1] {
        let a = ReadIn {
            fh,
            size: 1024,
            flags: flags as u32,
            ..Default::default()
        };
        let r = h.call_with(Opcode::Read as u32, e.nodeid, &[a.as_slice()], 1024 + 16);
        assert_eq!(
            r.result().map(|d| d.to_vec()),
            Ok(HELLO.to_vec()),
            "flags {flags:#x}"
        );
    }
    assert_eq!(h.read(e.nodeid, fh, 0, 1024), Ok(HELLO.to_vec()));
    h.dirs.assert_outside_untouched();
}
