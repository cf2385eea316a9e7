use std::sync::{Arc, Mutex};

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::devices::virtio::{ActivateError, DeviceCommon};

/// A device that records what the transport gives it.
struct Probe {
    common: DeviceCommon,
    acked: u64,
    activations: Vec<(usize, Vec<u16>)>,
    config: [u8; 8],
    resettable: bool,
    interrupt: Option<Arc<dyn Interrupt>>,
}

impl VirtioDevice for Probe {
    fn common(&self) -> &DeviceCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }
    fn set_acked_features(&mut self, f: u64) {
        self.acked = f;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let start = offset as usize;
        if let Some(src) = self.config.get(start..start + data.len()) {
            data.copy_from_slice(src);
        }
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        self.activations.push((
            queues.len(),
            queues.iter().map(|q| q.queue.size()).collect(),
        ));
        self.interrupt = Some(interrupt);
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.resettable
    }
}

struct Fixture {
    dev: Arc<Mutex<Probe>>,
    t: MmioTransport,
    irq: EventFd,
}

fn fixture() -> Fixture {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let dev = Arc::new(Mutex::new(Probe {
        common: DeviceCommon::new("probe", 19, 1 << 3, &[256, 256, 64], Vec::new()).unwrap(),
        acked: 0,
        activations: Vec::new(),
        config: 0x1122_3344_5566_7788u64.to_le_bytes(),
        resettable: false,
        interrupt: None,
    }));
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(dev.clone(), mem, irq.try_clone().unwrap()).unwrap();
    Fixture { dev, t, irq }
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Drives the driver side of negotiation up to FEATURES_OK.
fn negotiate(t: &mut MmioTransport) {
    w(t, 0x70, status::ACKNOWLEDGE);
    w(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    w(t, 0x24, 0);
    w(t, 0x20, 1 << 3);
    w(t, 0x24, 1);
    w(t, 0x20, 1); // VERSION_1
    w(
        t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
}

fn setup_queue(t: &mut MmioTransport, idx: u32, size: u32, base: u64) {
    w(t, 0x30, idx);
    w(t, 0x38, size);
    w(t, 0x80, base as u32);
    w(t, 0x84, (base >> 32) as u32);
    w(t, 0x90, (base + 0x1000) as u32);
    w(t, 0x94, 0);
    w(t, 0xa0, (base + 0x2000) as u32);
    w(t, 0xa4, 0);
    w(t, 0x44, 1);
}

const ALL_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn identity_registers() {
    let mut f = fixture();
    assert_eq!(r(&mut f.t, 0x00), 0x7472_6976);
    assert_eq!(r(&mut f.t, 0x04), 2);
    assert_eq!(r(&mut f.t, 0x08), 19);
    w(&mut f.t, 0x30, 2);
    assert_eq!(r(&mut f.t, 0x34), 64);
    w(&mut f.t, 0x30, 3);
    assert_eq!(r(&mut f.t, 0x34), 0, "no such queue");
}

#[test]
fn feature_pages_and_acked_subset() {
    let mut f = fixture();
    w(&mut f.t, 0x14, 0);
    assert_eq!(r(&mut f.t, 0x10), 1 << 3);
    w(&mut f.t, 0x14, 1);
    assert_eq!(r(&mut f.t, 0x10), 1, "VERSION_1 in the high word");
    w(&mut f.t, 0x14, 7);
    assert_eq!(r(&mut f.t, 0x10), 0);
    w(&mut f.t, 0x70, status::ACKNOWLEDGE);
    w(&mut f.t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    // Driver claims features that were never offered: they are dropped.
    w(&mut f.t, 0x24, 0);
    w(&mut f.t, 0x20, 0xffff_ffff);
    w(&mut f.t, 0x24, 1);
    w(&mut f.t, 0x20, 0xffff_ffff);
    w(
        &mut f.t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(f.dev.lock().unwrap().acked, (1 << 3) | VIRTIO_F_VERSION_1);
}

#[test]
fn legacy_driver_refused() {
    let mut f = fixture();
    w(&mut f.t, 0x70, status::ACKNOWLEDGE);
    w(&mut f.t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    w(
        &mut f.t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(
        r(&mut f.t, 0x70) & status::FEATURES_OK,
        0,
        "FEATURES_OK must not stick without VERSION_1"
    );
}

#[test]
fn status_transitions_enforced() {
    let mut f = fixture();
    // Skipping steps is refused.
    w(&mut f.t, 0x70, status::DRIVER_OK);
    assert_eq!(r(&mut f.t, 0x70), 0);
    w(
        &mut f.t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(r(&mut f.t, 0x70), 0);
    negotiate(&mut f.t);
    // Clearing a bit other than by reset is refused.
    w(&mut f.t, 0x70, status::ACKNOWLEDGE);
    assert_eq!(
        r(&mut f.t, 0x70),
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
    );
    assert!(f.dev.lock().unwrap().activations.is_empty());
}

#[test]
fn activation_hands_over_configured_queues() {
    let mut f = fixture();
    negotiate(&mut f.t);
    setup_queue(&mut f.t, 0, 128, 0x1_0000);
    setup_queue(&mut f.t, 1, 256, 0x2_0000);
    setup_queue(&mut f.t, 2, 64, 0x3_0000);
    w(&mut f.t, 0x70, ALL_OK);
    assert_eq!(r(&mut f.t, 0x70), ALL_OK);
    assert_eq!(
        f.dev.lock().unwrap().activations,
        vec![(3, vec![128, 256, 64])]
    );
    // After DRIVER_OK, queue registers are frozen.
    w(&mut f.t, 0x30, 0);
    w(&mut f.t, 0x38, 2);
    w(&mut f.t, 0x44, 0);
    assert_eq!(r(&mut f.t, 0x44), 1);
}

#[test]
fn queue_registers_refused_before_features_ok() {
    let mut f = fixture();
    setup_queue(&mut f.t, 0, 128, 0x1_0000);
    assert_eq!(r(&mut f.t, 0x44), 0);
}

#[test]
fn invalid_queue_blocks_activation() {
    let mut f = fixture();
    negotiate(&mut f.t);
    // Rings beyond the end of guest memory.
    setup_queue(&mut f.t, 0, 128, 0xffff_0000_0000);
    w(&mut f.t, 0x70, ALL_OK);
    assert!(f.dev.lock().unwrap().activations.is_empty());
    assert_ne!(r(&mut f.t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
    // A size that is not a power of two is refused by the queue; the device
    // never sees it.
    let mut f = fixture();
    negotiate(&mut f.t);
    setup_queue(&mut f.t, 0, 100, 0x1_0000);
    w(&mut f.t, 0x70, ALL_OK);
    assert_eq!(f.dev.lock().unwrap().activations[0].1[0], 256);
}

#[test]
fn interrupt_status_and_ack() {
    let mut f = fixture();
    negotiate(&mut f.t);
    setup_queue(&mut f.t, 0, 16, 0x1_0000);
    w(&mut f.t, 0x70, ALL_OK);
    let irq = f.dev.lock().unwrap().interrupt.clone().unwrap();
    irq.signal_used_queue().unwrap();
    assert_eq!(f.irq.read().unwrap(), 1);
    assert_eq!(r(&mut f.t, 0x60), INT_USED_RING);
    irq.signal_config_change().unwrap();
    assert_eq!(r(&mut f.t, 0x60), INT_USED_RING | INT_CONFIG);
    w(&mut f.t, 0x64, INT_USED_RING);
    assert_eq!(r(&mut f.t, 0x60), INT_CONFIG);
}

#[test]
fn notify_fallback_and_bounds() {
    let mut f = fixture();
    w(&mut f.t, 0x50, 1);
    assert_eq!(f.t.queue_kicks()[1].read().unwrap(), 1);
    assert!(f.t.queue_kicks()[0].read().is_err(), "queue 0 not kicked");
    // Out-of-range queue index: ignored, no panic.
    w(&mut f.t, 0x50, 99);
    w(&mut f.t, 0x30, u32::MAX);
    w(&mut f.t, 0x38, 8);
}

#[test]
fn config_space_and_odd_widths() {
    let mut f = fixture();
    let mut b = [0u8; 8];
    f.t.read(0x100, &mut b);
    assert_eq!(u64::from_le_bytes(b), 0x1122_3344_5566_7788);
    let mut b = [0u8; 2];
    f.t.read(0x104, &mut b);
    assert_eq!(u16::from_le_bytes(b), 0x3344);
    // Past the device's config: zeros, not stale data.
    let mut b = [0xaau8; 4];
    f.t.read(0x200, &mut b);
    assert_eq!(b, [0; 4]);
    // Registers need 32-bit access.
    let mut b = [0xaau8; 2];
    f.t.read(0x00, &mut b);
    assert_eq!(b, [0; 2]);
    f.t.write(0x70, &[1]);
    assert_eq!(r(&mut f.t, 0x70), 0);
}

#[test]
fn reset_before_and_after_activation() {
    let mut f = fixture();
    negotiate(&mut f.t);
    w(&mut f.t, 0x70, 0);
    assert_eq!(r(&mut f.t, 0x70), 0);
    negotiate(&mut f.t);
    setup_queue(&mut f.t, 0, 16, 0x1_0000);
    w(&mut f.t, 0x70, ALL_OK);
    // Not resettable: the transport says so instead of pretending.
    w(&mut f.t, 0x70, 0);
    assert_ne!(r(&mut f.t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
    f.dev.lock().unwrap().resettable = true;
    w(&mut f.t, 0x70, 0);
    assert_eq!(r(&mut f.t, 0x70), 0);
    w(&mut f.t, 0x30, 0);
    assert_eq!(r(&mut f.t, 0x44), 0, "queues reset");
}

thread_local! {
    /// Log records emitted on this thread (tests run on threads of their own).
    static RECORDS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts husk-vmm's records, per emitting thread. (virtio-queue logs
/// every invalid queue too; husk-vmm's logger drops that crate below debug.)
struct CountingLogger;

impl log::Log for CountingLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        if r.target().starts_with("husk_vmm") {
            RECORDS.with(|c| c.set(c.get() + 1));
        }
    }
    fn flush(&self) {}
}

fn records_on_this_thread() -> usize {
    static LOGGER: CountingLogger = CountingLogger;
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        log::set_logger(&LOGGER).expect("no other logger in unit tests");
        log::set_max_level(log::LevelFilter::Trace);
    });
    RECORDS.with(|c| c.get())
}

/// Review F4: a driver looping reset → ACKNOWLEDGE → DRIVER → FEATURES_OK
/// without VERSION_1 (four MMIO writes) must not write a log line each time;
/// nor a driver that activates an invalid queue again and again.
#[test]
fn repeated_driver_mistakes_are_logged_once() {
    let mut f = fixture();
    let before = records_on_this_thread();
    for _ in 0..10_000 {
        w(&mut f.t, 0x70, 0);
        w(&mut f.t, 0x70, status::ACKNOWLEDGE);
        w(&mut f.t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        w(
            &mut f.t,
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }
    assert!(
        records_on_this_thread() - before <= 1,
        "{} log records",
        records_on_this_thread() - before
    );
    assert_eq!(f.t.problems().legacy_driver, 10_000);

    let before = records_on_this_thread();
    for _ in 0..1_000 {
        w(&mut f.t, 0x70, 0);
        negotiate(&mut f.t);
        // Rings far outside the 1 MiB of guest memory.
        setup_queue(&mut f.t, 0, 16, 0x10_0000_0000);
        w(&mut f.t, 0x70, ALL_OK);
        assert_ne!(r(&mut f.t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
    }
    assert!(
        records_on_this_thread() - before <= 1,
        "{} log records",
        records_on_this_thread() - before
    );
    assert_eq!(f.t.problems().invalid_queue, 1_000);
    assert!(f.dev.lock().unwrap().activations.is_empty());
}
