//! The virtio-mmio transport (`vmm/src/devices/virtio/mmio.rs`) as a vCPU
//! drives it: register reads and writes of any offset, width and value,
//! config space accesses, and guest memory the queue registers point into.
//!
//! Input: byte 0 picks the device behind the transport: even, a probe that
//! records what the transport hands it and checks the transport's promises
//! (features acked ⊆ offered, queues valid at activation, no second
//! activation without a reset); odd, the real `Vsock` (unix socket in this
//! process's scratch directory), whose queues are then processed against
//! whatever the input put in guest memory. Then operations (see `run_one`).
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use husk_fuzz::cursor::Cursor;
use husk_fuzz::ring::{guest_memory, Mem, QueueT};
use husk_vmm::devices::virtio::mmio::{MmioTransport, INT_USED_RING};
use husk_vmm::devices::virtio::vsock::Vsock;
use husk_vmm::devices::virtio::{
    ActivateError, ActivatedQueue, DeviceCommon, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use husk_vmm::devices::BusDevice;
use libfuzzer_sys::fuzz_target;
use vm_memory::Bytes;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM_SIZE: u64 = 1 << 20;

/// A device that checks what the transport does to it.
struct Probe {
    common: DeviceCommon,
    sizes: Vec<u16>,
    features: u64,
    resettable: bool,
    fail_activation: bool,
    active: bool,
    mem: Option<Mem>,
    interrupt: Option<Arc<dyn Interrupt>>,
    config: [u8; 12],
}

impl VirtioDevice for Probe {
    fn common(&self) -> &DeviceCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }
    fn set_acked_features(&mut self, f: u64) {
        assert_eq!(
            f & !(self.features | VIRTIO_F_VERSION_1),
            0,
            "acked features {f:#x} not offered ({:#x})",
            self.features
        );
        assert!(!self.active, "features set on an active device");
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        if let Some(src) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.config.get(o..o.checked_add(data.len())?))
        {
            data.copy_from_slice(src);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let Some(dst) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.config.get_mut(o..o.checked_add(data.len())?))
        {
            dst.copy_from_slice(data);
        }
    }
    fn activate(
        &mut self,
        mem: Mem,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        assert!(!self.active, "activated twice without a reset");
        assert_eq!(queues.len(), self.sizes.len());
        for (q, max) in queues.iter().zip(&self.sizes) {
            assert_eq!(q.queue.max_size(), *max);
            assert!(q.queue.size() <= *max && q.queue.size().is_power_of_two());
            if q.queue.ready() {
                assert!(
                    q.queue.is_valid(&mem),
                    "an invalid ready queue was activated"
                );
            }
        }
        if self.fail_activation {
            return Err(ActivateError::Device("probe says no".into()));
        }
        self.active = true;
        self.mem = Some(mem);
        self.interrupt = Some(interrupt);
        Ok(())
    }
    fn reset(&mut self) -> bool {
        if self.resettable {
            self.active = false;
            self.interrupt = None;
        }
        self.resettable
    }
}

fn scratch() -> &'static std::path::PathBuf {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        husk_fuzz::scratch::ignore_sigpipe();
        husk_fuzz::scratch::process_dir("mmio")
    })
}

enum Dev {
    Probe(Arc<Mutex<Probe>>),
    Vsock(Arc<Mutex<Vsock>>, std::path::PathBuf),
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

const STATUS_STEPS: [u32; 8] = [0, 0x1, 0x3, 0xb, 0xf, 0x80, 0x8b, 0x4f];

fn run_one(data: &[u8]) {
    let mut c = Cursor::new(data);
    let sel = c.u8();
    let mem = guest_memory(MEM_SIZE as usize);
    let dev = if sel & 1 == 0 {
        let nq = 1 + usize::from((sel >> 1) % 3);
        let sizes: Vec<u16> = (0..nq)
            .map(|_| match c.u8() % 6 {
                0 => 1,
                1 => 2,
                2 => 64,
                3 => 256,
                4 => 1024,
                _ => c.u16(),
            })
            .collect();
        let features = c.u64();
        let common = DeviceCommon::new("probe", 26, features, &sizes, Vec::new()).expect("eventfd");
        Dev::Probe(Arc::new(Mutex::new(Probe {
            common,
            sizes,
            features,
            resettable: sel & 0x10 != 0,
            fail_activation: sel & 0x20 != 0,
            active: false,
            mem: None,
            interrupt: None,
            config: *b"husk-fuzz-cf",
        })))
    } else {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = scratch().join(format!("m{}.sock", N.fetch_add(1, Ordering::Relaxed)));
        let v = Vsock::new(3, &path).expect("vsock");
        Dev::Vsock(Arc::new(Mutex::new(v)), path)
    };
    let device: Arc<Mutex<dyn VirtioDevice>> = match &dev {
        Dev::Probe(p) => p.clone(),
        Dev::Vsock(v, _) => v.clone(),
    };
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    // Invalid queue sizes (not a power of two, > 32768) are refused here.
    if let Ok(mut t) = MmioTransport::new(device, mem.clone(), irq) {
        let mut ops = 0;
        while !c.is_empty() && ops < 256 {
            ops += 1;
            match c.u8() % 9 {
                0 => {
                    let off = u64::from(c.u8() % 0x40) * 4;
                    let v = c.u32();
                    w(&mut t, off, v);
                }
                1 => {
                    let off = u64::from(c.u8() % 0x40) * 4;
                    let v = r(&mut t, off);
                    if off == 0 {
                        assert_eq!(v, 0x7472_6976);
                    }
                }
                2 | 3 => {
                    // Any offset in the window (config space from 0x100), any width.
                    let off = u64::from(c.u16() % 0x1000);
                    let len = usize::from(c.u8() % 9);
                    if c.bool() {
                        let b = c.bytes(len).to_vec();
                        t.write(off, &b);
                    } else {
                        let mut b = vec![0xa5u8; len];
                        t.read(off, &mut b);
                        if len != 4 && off < 0x100 {
                            assert!(b.iter().all(|&x| x == 0), "odd-width read returned data");
                        }
                    }
                }
                4 => {
                    let addr = u64::from(c.u32()) % MEM_SIZE;
                    let len = usize::from(c.u8());
                    let b = c.bytes(len);
                    let _ = mem.write_slice(b, vm_memory::GuestAddress(addr));
                }
                5 => {
                    let v = STATUS_STEPS[usize::from(c.u8() % 8)];
                    w(&mut t, 0x70, v);
                    if v == 0 && r(&mut t, 0x70) != 0 {
                        // Only a device that cannot reset stays (with DEVICE_NEEDS_RESET).
                        assert_ne!(r(&mut t, 0x70) & 0x40, 0);
                    }
                }
                6 => {
                    // The register sequence a driver uses to set up a queue.
                    let q = u32::from(c.u8() % 4);
                    let size = u32::from(c.u16());
                    let base = u64::from(c.u32() % MEM_SIZE as u32) & !0xf;
                    let avail = base + 16 * u64::from(size);
                    let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
                    for (off, v) in [
                        (0x30, q),
                        (0x38, size),
                        (0x80, base as u32),
                        (0x84, 0),
                        (0x90, avail as u32),
                        (0x94, 0),
                        (0xa0, used as u32),
                        (0xa4, 0),
                        (0x44, 1),
                    ] {
                        w(&mut t, off, v);
                    }
                }
                7 => {
                    let what = c.u8();
                    match &dev {
                        Dev::Vsock(v, _) => {
                            let mut v = v.lock().unwrap();
                            match what % 3 {
                                0 => v.process_tx(),
                                1 => v.process_rx(),
                                _ => v.process_backend_events(),
                            }
                        }
                        Dev::Probe(p) => {
                            let i = p.lock().unwrap().interrupt.clone();
                            if let Some(i) = i {
                                i.signal_used_queue().unwrap();
                                assert_ne!(r(&mut t, 0x60) & INT_USED_RING, 0);
                            }
                        }
                    }
                }
                _ => {
                    // Feature negotiation helper: select a word and ack a value.
                    let sel = u32::from(c.u8() % 3);
                    w(&mut t, 0x24, sel);
                    let v = c.u32();
                    w(&mut t, 0x20, v);
                }
            }
        }
    }
    if let Dev::Vsock(_, path) = dev {
        let _ = std::fs::remove_file(path);
    }
}

fuzz_target!(|data: &[u8]| run_one(data));
