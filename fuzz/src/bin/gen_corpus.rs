//! Writes the seed corpora under `fuzz/corpus/<target>/`: small valid inputs
//! in each target's format (see the targets' module docs), so fuzzing starts
//! from requests that get deep into the code instead of from random bytes.
//! `cargo run --manifest-path fuzz/Cargo.toml --bin gen-corpus [TARGET...]`
//! (any flags; no target: all of them). Existing seeds of the same name are
//! overwritten; others are kept.

use std::path::{Path, PathBuf};

use husk_fuzz::cursor::Writer;
use husk_protocol::*;

fn put(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

// ---------------------------------------------------------------- agent_frame

fn frame(v: &impl serde::Serialize) -> Vec<u8> {
    let mut buf = Vec::new();
    send(&mut buf, v).unwrap();
    buf
}

fn agent_frame(dir: &Path) {
    let responses = vec![
        Response::Hello(HelloInfo {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            kernel_version: "6.1.0".into(),
            boot_to_listen_us: 12345,
            boot_to_init_us: 2345,
            online_cpus: 1,
            memory_total_kib: 262144,
        }),
        Response::Pong { seq: 7 },
        Response::ShuttingDown,
        Response::Ok,
        Response::Exited {
            status: ExitStatus::Code(3),
        },
        Response::Exited {
            status: ExitStatus::Signal(9),
        },
        Response::State {
            pid: 42,
            status: ContainerStatus::Running,
        },
        Response::Stats(Box::new(ContainerStats {
            memory_limit_bytes: Some(1 << 30),
            memory_stat: [("anon".to_string(), 4096u64)].into_iter().collect(),
            ..Default::default()
        })),
        Response::Processes {
            processes: vec![ProcessInfo {
                pid: 1,
                ppid: 0,
                uid: 0,
                state: "S".into(),
                start_us: 1,
                cpu_us: 2,
                exec_id: Some("e1".into()),
                args: vec!["sh".into(), "-c".into(), "sleep 1".into()],
            }],
        },
        Response::Error {
            message: "no such container: \"x\"\n\u{1b}[0m".into(),
        },
    ];
    let id = || "c1".to_string();
    let requests = vec![
        Request::Hello {
            protocol_version: PROTOCOL_VERSION,
        },
        Request::Ping { seq: 1 },
        Request::Shutdown,
        Request::CreateContainer(Box::new(CreateContainer {
            id: id(),
            spec: oci_spec::runtime::Spec::default(),
            terminal: false,
        })),
        Request::StartContainer { id: id() },
        Request::Signal {
            id: id(),
            exec_id: Some("e1".into()),
            signal: 15,
            all: true,
        },
        Request::WaitProcess {
            id: id(),
            exec_id: None,
        },
        Request::AttachStdio {
            id: id(),
            exec_id: None,
            stream: StdioStream::Stdout,
        },
        Request::ContainerState { id: id() },
        Request::DeleteContainer {
            id: id(),
            force: true,
        },
        Request::ExecProcess(Box::new(ExecProcess {
            id: id(),
            exec_id: "e1".into(),
            process: oci_spec::runtime::Process::default(),
            terminal: true,
        })),
        Request::StartProcess {
            id: id(),
            exec_id: "e1".into(),
        },
        Request::DeleteProcess {
            id: id(),
            exec_id: "e1".into(),
        },
        Request::ResizeTerminal {
            id: id(),
            exec_id: None,
            rows: 24,
            cols: 80,
        },
        Request::PauseContainer { id: id() },
        Request::ResumeContainer { id: id() },
        Request::UpdateContainer {
            id: id(),
            resources: Box::default(),
        },
        Request::ContainerStats { id: id() },
        Request::ListProcesses { id: id() },
    ];
    let mut all = vec![0u8];
    for (i, r) in responses.iter().enumerate() {
        let f = frame(r);
        all.extend_from_slice(&f);
        put(dir, &format!("response-{i:02}"), &[&[0u8][..], &f].concat());
    }
    put(dir, "responses-stream", &all);
    for (i, r) in requests.iter().enumerate() {
        put(
            dir,
            &format!("request-{i:02}"),
            &[&[1u8][..], &frame(r)].concat(),
        );
    }
    // Edge cases: an unknown field, a truncated frame, a frame over the limit.
    let mut bad = vec![0u8];
    let j = br#"{"pong":{"seq":1,"extra":2}}"#;
    bad.extend_from_slice(&(j.len() as u32).to_be_bytes());
    bad.extend_from_slice(j);
    bad.extend_from_slice(&[0, 0, 0, 9, b'{']);
    put(dir, "response-bad", &bad);
    put(dir, "too-large", &[1, 0, 0x10, 0, 1]);
}

// ---------------------------------------------------------------- fs_request

/// fs_request input builder (format: fuzz_targets/fs_request.rs).
struct FsSeed(Writer);

const CAP: u16 = 4096;

impl FsSeed {
    fn new(options: u8) -> Self {
        let mut w = Writer::default();
        w.u8(options);
        FsSeed(w)
    }

    #[allow(clippy::too_many_arguments)]
    fn req_full(
        &mut self,
        flags: u8,
        opcode: u8,
        nodeid: u8,
        uid: u8,
        split: u8,
        cap: u16,
        args: &[u8],
    ) -> &mut Self {
        self.0
            .u8(0)
            .u8(flags)
            .u8(opcode)
            .u8(nodeid)
            .u8(uid)
            .u8(uid)
            .u8(split)
            .u16(cap)
            .u16(args.len() as u16)
            .bytes(args);
        self
    }

    fn req(&mut self, opcode: u8, nodeid: u8, args: &[u8]) -> &mut Self {
        self.req_full(0, opcode, nodeid, 0, 0, CAP, args)
    }

    fn init(&mut self) -> &mut Self {
        // major 7, minor 31, max_readahead 128 KiB, flags: what a Linux guest asks for.
        let mut a = Writer::default();
        a.u32(7).u32(31).u32(0x20000).u32(0x07ff_ffff);
        self.req(26, 1, &a.0)
    }

    fn bytes(&self) -> &[u8] {
        &self.0 .0
    }
}

fn name(n: &str) -> Vec<u8> {
    let mut v = n.as_bytes().to_vec();
    v.push(0);
    v
}

fn w(f: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut w = Writer::default();
    f(&mut w);
    w.0
}

mod op {
    pub const LOOKUP: u8 = 1;
    pub const FORGET: u8 = 2;
    pub const GETATTR: u8 = 3;
    pub const SETATTR: u8 = 4;
    pub const READLINK: u8 = 5;
    pub const SYMLINK: u8 = 6;
    pub const MKNOD: u8 = 8;
    pub const MKDIR: u8 = 9;
    pub const UNLINK: u8 = 10;
    pub const RMDIR: u8 = 11;
    pub const RENAME: u8 = 12;
    pub const LINK: u8 = 13;
    pub const OPEN: u8 = 14;
    pub const READ: u8 = 15;
    pub const WRITE: u8 = 16;
    pub const STATFS: u8 = 17;
    pub const RELEASE: u8 = 18;
    pub const FSYNC: u8 = 20;
    pub const SETXATTR: u8 = 21;
    pub const GETXATTR: u8 = 22;
    pub const LISTXATTR: u8 = 23;
    pub const REMOVEXATTR: u8 = 24;
    pub const FLUSH: u8 = 25;
    pub const OPENDIR: u8 = 27;
    pub const READDIR: u8 = 28;
    pub const RELEASEDIR: u8 = 29;
    pub const ACCESS: u8 = 34;
    pub const CREATE: u8 = 35;
    pub const INTERRUPT: u8 = 36;
    pub const DESTROY: u8 = 38;
    pub const IOCTL: u8 = 39;
    pub const BATCH_FORGET: u8 = 42;
    pub const FALLOCATE: u8 = 43;
    pub const READDIRPLUS: u8 = 44;
    pub const RENAME2: u8 = 45;
    pub const LSEEK: u8 = 46;
    pub const COPY_FILE_RANGE: u8 = 47;
    pub const SETUPMAPPING: u8 = 48;
}

fn read_in(fh: u64, off: u64, size: u32) -> Vec<u8> {
    w(|w| {
        w.u64(fh).u64(off).u32(size).u32(0).u64(0).u32(0).u32(0);
    })
}

fn fs_request(dir: &Path) {
    use op::*;
    // Nodeids: 1 is the root; every new inode PassthroughFs meets gets the
    // next number from 2, handles count from 1.
    let mut s = FsSeed::new(0x11); // Auto cache, queue size 64
    s.init()
        .req(LOOKUP, 1, &name("hello.txt"))
        .req(
            OPEN,
            2,
            &w(|w| {
                w.u32(0).u32(0);
            }),
        )
        .req(READ, 2, &read_in(1, 0, 1024))
        .req(
            FLUSH,
            2,
            &w(|w| {
                w.u64(1).u32(0).u32(0).u64(0);
            }),
        )
        .req(
            RELEASE,
            2,
            &w(|w| {
                w.u64(1).u32(0).u32(0).u64(0);
            }),
        )
        .req(
            GETATTR,
            2,
            &w(|w| {
                w.u32(0).u32(0).u64(0);
            }),
        )
        .req(
            FORGET,
            2,
            &w(|w| {
                w.u64(1);
            }),
        );
    put(dir, "read-file", s.bytes());

    let mut s = FsSeed::new(0x10);
    s.init()
        .req(
            OPENDIR,
            1,
            &w(|w| {
                w.u32(0).u32(0);
            }),
        )
        .req(READDIR, 1, &read_in(1, 0, 1024))
        .req(READDIRPLUS, 1, &read_in(1, 0, 1024))
        .req(
            RELEASEDIR,
            1,
            &w(|w| {
                w.u64(1).u32(0).u32(0).u64(0);
            }),
        )
        .req(LOOKUP, 1, &name("sub"))
        .req(LOOKUP, 2, &name("deeper"))
        .req(LOOKUP, 3, &name(".."))
        .req(LOOKUP, 1, &name(".."))
        .req(LOOKUP, 1, &name("."))
        .req(STATFS, 1, &[])
        .req(
            ACCESS,
            1,
            &w(|w| {
                w.u32(7).u32(0);
            }),
        );
    put(dir, "readdir-lookup", s.bytes());

    let mut s = FsSeed::new(0x20);
    s.init()
        .req(LOOKUP, 1, &name("up"))
        .req(READLINK, 2, &[])
        .req(LOOKUP, 1, &name("abs"))
        .req(
            OPEN,
            3,
            &w(|w| {
                w.u32(0).u32(0);
            }),
        )
        .req(LOOKUP, 1, &name("fifo"))
        .req(
            OPEN,
            4,
            &w(|w| {
                w.u32(0).u32(0);
            }),
        )
        .req(LOOKUP, 1, &name("../outside"))
        .req(LOOKUP, 1, &name("/etc"));
    put(dir, "links-and-escapes", s.bytes());

    let mut s = FsSeed::new(0x1c); // writeback + xattr
    s.init()
        .req(
            CREATE,
            1,
            &[
                w(|w| {
                    w.u32(0o102).u32(0o644).u32(0o022).u32(0);
                }),
                name("new"),
            ]
            .concat(),
        )
        .req(
            WRITE,
            2,
            &[
                w(|w| {
                    w.u64(1).u64(0).u32(6).u32(0).u64(0).u32(0).u32(0);
                }),
                b"hello\n".to_vec(),
            ]
            .concat(),
        )
        .req(
            FSYNC,
            2,
            &w(|w| {
                w.u64(1).u32(0).u32(0);
            }),
        )
        .req(
            SETATTR,
            2,
            &w(|w| {
                // valid = MODE | SIZE
                w.u32(1 | 8).u32(0).u64(0).u64(3).u64(0);
                w.u64(0).u64(0).u64(0).u32(0).u32(0).u32(0).u32(0o4755);
                w.u32(0).u32(0).u32(0).u32(0);
            }),
        )
        .req(
            FALLOCATE,
            2,
            &w(|w| {
                w.u64(1).u64(0).u64(8192).u32(0).u32(0);
            }),
        )
        .req(
            LSEEK,
            2,
            &w(|w| {
                w.u64(1).u64(0).u32(3).u32(0);
            }),
        )
        .req(
            COPY_FILE_RANGE,
            2,
            &w(|w| {
                w.u64(1).u64(0).u64(2).u64(1).u64(100).u64(6).u64(0);
            }),
        )
        .req(
            SETXATTR,
            2,
            &[
                w(|w| {
                    w.u32(3).u32(0);
                }),
                name("user.k"),
                b"val".to_vec(),
            ]
            .concat(),
        )
        .req(
            GETXATTR,
            2,
            &[
                w(|w| {
                    w.u32(64).u32(0);
                }),
                name("user.k"),
            ]
            .concat(),
        )
        .req(
            LISTXATTR,
            2,
            &w(|w| {
                w.u32(64).u32(0);
            }),
        )
        .req(REMOVEXATTR, 2, &name("user.k"))
        .req(
            RENAME,
            1,
            &[
                w(|w| {
                    w.u64(1);
                }),
                name("new"),
                name("renamed"),
            ]
            .concat(),
        )
        .req(
            RENAME2,
            1,
            &[
                w(|w| {
                    w.u64(1).u32(2).u32(0);
                }),
                name("renamed"),
                name("hello.txt"),
            ]
            .concat(),
        )
        .req(
            LINK,
            1,
            &[
                w(|w| {
                    w.u64(2);
                }),
                name("hard"),
            ]
            .concat(),
        )
        .req(UNLINK, 1, &name("hard"))
        .req(
            RELEASE,
            2,
            &w(|w| {
                w.u64(1).u32(0).u32(0).u64(0);
            }),
        );
    put(dir, "create-write-rename", s.bytes());

    let mut s = FsSeed::new(0x10);
    s.init()
        .req(
            MKDIR,
            1,
            &[
                w(|w| {
                    w.u32(0o755).u32(0);
                }),
                name("d"),
            ]
            .concat(),
        )
        .req(
            SYMLINK,
            2,
            &[name("l"), name("../../../etc/shadow")].concat(),
        )
        .req(
            MKNOD,
            2,
            &[
                w(|w| {
                    w.u32(0o10644).u32(0).u32(0).u32(0);
                }),
                name("p"),
            ]
            .concat(),
        )
        .req(
            MKNOD,
            2,
            &[
                w(|w| {
                    w.u32(0o20644).u32(0x801).u32(0).u32(0);
                }),
                name("sda"),
            ]
            .concat(),
        )
        .req(
            MKNOD,
            2,
            &[
                w(|w| {
                    w.u32(0o20000).u32(0).u32(0).u32(0);
                }),
                name("wh"),
            ]
            .concat(),
        )
        .req_full(
            0,
            MKDIR,
            1,
            1,
            0,
            CAP,
            &[
                w(|w| {
                    w.u32(0o700).u32(0o22);
                }),
                name("u"),
            ]
            .concat(),
        )
        .req(UNLINK, 2, &name("l"))
        .req(RMDIR, 1, &name("d"))
        .req(
            BATCH_FORGET,
            0,
            &w(|w| {
                w.u32(1).u32(0).u64(2).u64(1);
            }),
        )
        .req(
            INTERRUPT,
            0,
            &w(|w| {
                w.u64(3);
            }),
        )
        .req(IOCTL, 1, &[0u8; 32])
        .req(SETUPMAPPING, 1, &[0u8; 40])
        .req(DESTROY, 1, &[]);
    put(dir, "mkdir-mknod-misc", s.bytes());

    // Chain shapes: header split over descriptors, indirect, deferred batch,
    // no room for a reply, oversized, a bad length, raw descriptors.
    let mut s = FsSeed::new(0x00); // queue size 8
    s.init()
        .req_full(0x00, LOOKUP, 1, 0, 0x33, CAP, &name("hello.txt"))
        .req_full(0x02, LOOKUP, 1, 0, 0x05, CAP, &name("sub"))
        .req_full(0x08, GETATTR, 1, 0, 0, CAP, &[0u8; 16])
        .req_full(0x08, GETATTR, 2, 0, 0, CAP, &[0u8; 16])
        .req_full(0x04, STATFS, 1, 0, 0, CAP, &[])
        .req_full(0x00, STATFS, 1, 0, 0, 0, &[])
        .req_full(0x00, STATFS, 1, 0, 0, 8, &[])
        .req_full(0x00, READ, 2, 0, 0, 0xffff, &read_in(1, 0, 1024))
        .req_full(0x20, WRITE, 2, 0, 0, CAP, &read_in(1, 0, 1024));
    s.0.u8(0)
        .u8(0x01)
        .u8(LOOKUP)
        .u8(1)
        .u8(0)
        .u8(0)
        .u8(0)
        .u16(CAP)
        .u16(4);
    s.0.bytes(b"sub\0").u32(1000);
    // raw: 2 descriptors at slot 3: readable header, writable reply.
    s.0.u8(1).u8(1).u8(1).u16(3);
    s.0.u32(0x4_0000).u32(40).u16(1).u16(4);
    s.0.u32(0x8_0000).u32(4096).u16(2).u16(0);
    s.0.u8(3).u8(1);
    // A bogus avail index.
    s.0.u8(4).u8(1).u16(0x4000);
    s.0.u8(3).u8(1);
    put(dir, "chain-shapes", s.bytes());
}

// ---------------------------------------------------------------- mmio

fn mmio(dir: &Path) {
    const ACK: u8 = 1;
    const DRIVER: u8 = 2;
    const FEAT_OK: u8 = 3;
    const DRIVER_OK: u8 = 4;
    let negotiate = |s: &mut Writer, f_lo: u32| {
        s.u8(5).u8(ACK).u8(5).u8(DRIVER);
        s.u8(8).u8(0).u32(f_lo).u8(8).u8(1).u32(1);
        s.u8(5).u8(FEAT_OK);
        s.u8(1).u8(0x70 / 4);
    };
    // Probe, one 256-entry queue, feature bit 3.
    let mut s = Writer::default();
    s.u8(0x10).u8(3).u64(1 << 3);
    for off in [0x00, 0x04, 0x08, 0x0c] {
        s.u8(1).u8(off / 4);
    }
    s.u8(0).u8(0x14 / 4).u32(1).u8(1).u8(0x10 / 4);
    negotiate(&mut s, 1 << 3);
    s.u8(6).u8(0).u16(256).u32(0x1000);
    s.u8(1).u8(0x34 / 4).u8(1).u8(0x44 / 4);
    s.u8(5)
        .u8(DRIVER_OK)
        .u8(7)
        .u8(0)
        .u8(1)
        .u8(0x60 / 4)
        .u8(0)
        .u8(0x64 / 4)
        .u32(1);
    s.u8(2)
        .u16(0x100)
        .u8(4)
        .u8(0)
        .u8(2)
        .u16(0x104)
        .u8(4)
        .u8(1)
        .bytes(b"abcd");
    s.u8(3).u16(0x70).u8(2).u8(1).bytes(b"\x01\x00");
    s.u8(5).u8(0).u8(1).u8(0x70 / 4);
    put(dir, "probe-activate-reset", &s.0);

    // Probe, three queues (one of them left unset), activation refused.
    let mut s = Writer::default();
    s.u8(0x24).u8(2).u8(3).u8(5).u16(32).u64(0);
    negotiate(&mut s, 0);
    s.u8(6).u8(0).u16(64).u32(0x2000);
    s.u8(6).u8(2).u16(16).u32(0xf_fff0); // the rings run past the end of memory
    s.u8(5).u8(DRIVER_OK).u8(1).u8(0x70 / 4);
    s.u8(5).u8(0).u8(5).u8(5).u8(5).u8(6);
    put(dir, "probe-bad-queue", &s.0);

    // The real vsock device: rx/tx/event queues, then a TX packet in memory.
    let mut s = Writer::default();
    s.u8(0x01);
    negotiate(&mut s, 0);
    for (q, base) in [(0u8, 0x1_0000u32), (1, 0x2_0000), (2, 0x3_0000)] {
        s.u8(6).u8(q).u16(16).u32(base);
    }
    s.u8(5).u8(DRIVER_OK);
    // TX descriptor 0 -> 44-byte REQUEST header at 0x4_0000; avail idx 1.
    let mut d = Writer::default();
    d.u64(0x4_0000).u32(44).u16(0).u16(0);
    s.u8(4).u32(0x2_0000).u8(16).bytes(&d.0);
    s.u8(4)
        .u32(0x2_0000 + 16 * 16)
        .u8(6)
        .bytes(&[0, 0, 1, 0, 0, 0]);
    let mut h = Writer::default();
    h.u64(3)
        .u64(2)
        .u32(1000)
        .u32(1024)
        .u32(0)
        .u16(1)
        .u16(1)
        .u32(0)
        .u32(65536)
        .u32(0);
    s.u8(4).u32(0x4_0000).u8(44).bytes(&h.0);
    s.u8(7).u8(0).u8(7).u8(1).u8(7).u8(2);
    s.u8(5).u8(0);
    put(dir, "vsock-activate-tx", &s.0);
}

// ---------------------------------------------------------------- vsock

/// vsock input builder (format: fuzz_targets/vsock.rs).
struct V(Writer);

const P_1024: u8 = 0;
const P_NONE: u8 = 2;
const P_LAST: u8 = 3;
const P_GUEST: u8 = 4; // 1001

impl V {
    fn new() -> V {
        let mut w = Writer::default();
        w.u8(2); // queue size 256
        V(w)
    }
    fn pkt(&mut self, src: u8, dst: u8, op: u8, flags: u32, data: &[u8]) -> &mut Self {
        self.0.u8(0).u8(0).u8(src).u8(dst).u8(op).u32(flags).u32(0);
        self.0.u16(data.len() as u16).bytes(data).u8(0);
        self
    }
    fn rx(&mut self, n: u8, layout: u8) -> &mut Self {
        self.0.u8(2).u8(n - 1).u8(layout);
        self
    }
    fn reply(&mut self, op: u8, data: &[u8]) -> &mut Self {
        self.0
            .u8(1)
            .u8(0)
            .u8(op)
            .u8(0)
            .u16(data.len() as u16)
            .bytes(data);
        self
    }
    fn op(&mut self, o: u8) -> &mut Self {
        self.0.u8(o);
        self
    }
}

fn vsock(dir: &Path) {
    const REQUEST: u8 = 1;
    const RESPONSE: u8 = 2;
    const SHUTDOWN: u8 = 4;
    const RW: u8 = 5;
    const CREDIT_UPDATE: u8 = 6;
    const CREDIT_REQUEST: u8 = 7;
    // Guest connects to host port 1024, data both ways, shutdown.
    let mut s = V::new();
    s.rx(4, 0).pkt(P_GUEST, P_1024, REQUEST, 0, &[]).op(8);
    s.pkt(P_GUEST, P_1024, RW, 0, b"hello host\n").op(6).0.u8(0);
    s.op(5).0.u8(0).u16(5).bytes(b"pong\n");
    s.rx(2, 0).pkt(P_GUEST, P_1024, CREDIT_REQUEST, 0, &[]);
    s.pkt(P_GUEST, P_1024, CREDIT_UPDATE, 0, &[]);
    s.pkt(P_GUEST, P_1024, SHUTDOWN, 3, &[])
        .rx(2, 0)
        .op(7)
        .0
        .u8(0)
        .u8(0);
    put(dir, "guest-connect", &s.0 .0);

    // Host connects to guest port 1001 with CONNECT, the guest accepts.
    let mut s = V::new();
    s.op(4).0.u8(1).u8(P_GUEST);
    s.rx(2, 0).reply(RESPONSE, &[]).op(6).0.u8(0);
    s.op(5).0.u8(0).u16(6).bytes(b"data!\n");
    s.rx(2, 0).reply(RW, b"answer").op(6).0.u8(0);
    s.reply(CREDIT_REQUEST, &[]).rx(1, 0);
    s.op(7).0.u8(1).u8(0);
    s.rx(2, 0).reply(SHUTDOWN, &[]).op(7).0.u8(0).u8(0);
    put(dir, "host-connect", &s.0 .0);

    // Refused and malformed things: no listener (RST), bad CONNECT lines,
    // wrong cids/types, odd RX buffers, raw descriptors.
    let mut s = V::new();
    s.rx(2, 0).pkt(P_GUEST, P_NONE, REQUEST, 0, &[]);
    s.op(4).0.u8(0).u8(12).bytes(b"CONNECT 99x\n");
    s.op(4).0.u8(0).u8(4).bytes(b"HELO");
    s.0.u8(0)
        .u8(0x07)
        .u64(7)
        .u64(9)
        .u16(2)
        .u8(P_GUEST)
        .u8(P_1024)
        .u8(RW);
    s.0.u32(0).u32(0).u16(0).u8(0);
    s.pkt(P_GUEST, P_LAST, RW, 0, b"no connection");
    s.rx(3, 1).rx(3, 2).rx(2, 3).rx(2, 4).rx(2, 5).rx(2, 0x30);
    s.op(3)
        .0
        .u8(1)
        .u8(1)
        .u16(9)
        .u32(0x3_0000)
        .u32(44)
        .u16(0)
        .u16(0);
    s.op(3)
        .0
        .u8(0)
        .u8(2)
        .u16(20)
        .u32(0xffff_0000)
        .u32(44)
        .u16(3)
        .u16(21);
    s.0.u32(0x3_1000).u32(100).u16(2).u16(20);
    s.op(9).0.u8(2);
    put(dir, "refused-malformed", &s.0 .0);

    // Guest overruns host credit: many RW packets without reading.
    let mut s = V::new();
    s.rx(2, 0).pkt(P_GUEST, P_1024, REQUEST, 0, &[]).op(8);
    for _ in 0..8 {
        s.pkt(P_GUEST, P_1024, RW, 0, &[b'x'; 2000]);
    }
    s.rx(8, 0);
    put(dir, "credit", &s.0 .0);
}

// ---------------------------------------------------------------- net_header

/// net_header input builder (format: fuzz_targets/net_header.rs).
struct N(Writer);

/// The features a Linux guest acks (VERSION_1, MAC, STATUS, CSUM,
/// GUEST_CSUM, GUEST_TSO4/6, HOST_TSO4/6).
const NET_ACKED: u64 = (1 << 32) | (1 << 5) | (1 << 16) | 0b11 | (0b11 << 7) | (0b11 << 11);

impl N {
    fn new(sel: u8, acked: u64) -> N {
        let mut w = Writer::default();
        w.u8(sel).u64(acked);
        N(w)
    }
    /// TX chain: header fields, frame length (u16), descriptor lengths
    /// (the last takes the rest).
    #[allow(clippy::too_many_arguments)]
    fn tx(
        &mut self,
        flags: u8,
        gso: u8,
        hdr_len: u16,
        gso_size: u16,
        cs: u16,
        co: u16,
        frame: u16,
        splits: &[u16],
    ) -> &mut Self {
        self.0
            .u8(0)
            .u8(flags)
            .u8(gso)
            .u16(hdr_len)
            .u16(gso_size)
            .u16(cs)
            .u16(co)
            .u16(0);
        self.0.u8(1).u16(frame).u8(splits.len() as u8);
        for &l in splits {
            self.0.u16(l).u8(0);
        }
        self.0.u8(0);
        self
    }
    /// RX chain of 1526-byte descriptors, `fill` bytes "read" into it.
    fn rx(&mut self, n: u8, fill: u16) -> &mut Self {
        self.0.u8(1).u8(n - 1);
        for _ in 0..n {
            self.0.u8(2).u8(0);
        }
        self.0.u16(fill);
        self
    }
}

fn net_header(dir: &Path) {
    // Plain frame, header in its own descriptor; a checksum-offloaded one.
    let mut s = N::new(0, NET_ACKED);
    s.tx(0, 0, 0, 0, 0, 0, 60, &[12]);
    s.tx(1, 0, 0, 0, 34, 6, 1514, &[5, 20]);
    s.rx(1, 72).rx(2, 1526);
    put(dir, "linux-plain", &s.0 .0);

    // TSO4 and TSO6 frames of 64 KiB, chains straddling a region boundary.
    let mut s = N::new(1, NET_ACKED);
    s.tx(1, 1, 54, 1448, 34, 16, 65000, &[12, 1000, 30000]);
    s.tx(1, 2, 74, 1428, 54, 16, 3000, &[]);
    s.0.u8(0).u8(0).u8(0).u16(0).u16(0).u16(0).u16(0).u16(0);
    s.0.u8(6).u8(200).u8(0);
    put(dir, "tso-straddle", &s.0 .0);

    // Refused: GSO without the feature, csum out of the frame, write-only
    // descriptor, short chains; bare headers; raw descriptors.
    let mut s = N::new(2, 1 << 32);
    s.tx(1, 1, 54, 1448, 34, 16, 3000, &[12]);
    s.tx(1, 0, 0, 0, 120, 30, 60, &[12]);
    s.0.u8(0)
        .bytes(&[0; 12])
        .u8(3)
        .u8(5)
        .u8(1)
        .u16(12)
        .u8(0)
        .u8(0);
    s.0.u8(0)
        .bytes(&[0; 12])
        .u8(0)
        .u8(60)
        .u8(1)
        .u16(12)
        .u8(0)
        .u8(0xee);
    s.0.u8(3)
        .bytes(&[1, 4, 54, 0, 0xa8, 5, 34, 0, 16, 0, 0, 0])
        .u32(3000);
    s.0.u8(3)
        .bytes(&[2, 0x81, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9])
        .u32(60);
    s.0.u8(2)
        .u8(0)
        .u8(2)
        .u16(3)
        .u8(0)
        .u32(0x2_0000)
        .u32(72)
        .u16(1)
        .u16(4);
    s.0.u8(1).u64(u64::MAX - 8).u32(100).u16(0).u16(0);
    s.0.u8(2)
        .u8(1)
        .u8(0)
        .u16(0)
        .u8(2)
        .u16(10)
        .u32(1526)
        .u16(2)
        .u16(0);
    put(dir, "refused-raw", &s.0 .0);
}

/// A fuzz target's name and the function that writes its seeds.
type Target = (&'static str, fn(&Path));

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let only: Vec<String> = std::env::args().skip(1).collect();
    let targets: [Target; 5] = [
        ("agent_frame", agent_frame),
        ("fs_request", fs_request),
        ("mmio", mmio),
        ("vsock", vsock),
        ("net_header", net_header),
    ];
    for (name, write) in targets {
        if only.is_empty() || only.iter().any(|o| o == name) {
            write(&root.join(name));
        }
    }
    println!("seeds written under {}", root.display());
}
