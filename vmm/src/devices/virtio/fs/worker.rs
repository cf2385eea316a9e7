//! The `fs-worker` thread: owns the activated queues and does all FUSE work.
//!
//! It waits on its own epoll for the queue kick eventfds (signalled by KVM
//! ioeventfds, or by the transport's QueueNotify fallback) and a stop eventfd.
//! Everything file-system related (the `PassthroughFs` syscalls, including
//! the per-request `setresuid`/`setresgid` credential switches) happens on
//! this thread, so a dedicated seccomp filter can be applied to it.

use std::io;
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::request::RequestHandler;
use crate::devices::virtio::Interrupt;
use crate::memory::GuestMemoryMmap;

pub(crate) const THREAD_NAME: &str = "fs-worker";
const STOP_TOKEN: u64 = u64::MAX;

pub(crate) struct Worker {
    pub handler: RequestHandler,
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn Interrupt>,
    /// Indexed by `HIPRIO_QUEUE`, `REQUEST_QUEUE`.
    pub queues: Vec<Queue>,
    pub kicks: Vec<EventFd>,
    pub stop: EventFd,
}

/// Run at the start of the worker thread, before it serves anything (the
/// VMM installs the thread's seccomp filter there). An error ends the thread.
pub type ThreadStart = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// The `fs-worker` thread. It is started once (by the VMM before the guest
/// runs, or lazily on the first activation) and then serves one activation
/// after another: a reset stops the current [`Worker`] but not the thread, so
/// no thread is ever spawned once the guest runs (the VMM's seccomp filters
/// allow no `clone` after start).
pub(crate) struct WorkerThread {
    jobs: Option<mpsc::Sender<Worker>>,
    /// One message per finished [`Worker::run`].
    finished: mpsc::Receiver<()>,
    /// The stop eventfd of the worker being served, if any.
    running: Option<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerThread {
    /// Starts the thread; returns once `on_start` ran there, with its error.
    pub fn spawn(on_start: Option<ThreadStart>) -> io::Result<WorkerThread> {
        let (jobs, job_rx) = mpsc::channel::<Worker>();
        let (done_tx, finished) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        let thread = thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                own_fs_state();
                let started = on_start.map_or(Ok(()), |f| f());
                let ok = started.is_ok();
                let _ = ready_tx.send(started);
                if !ok {
                    return;
                }
                while let Ok(worker) = job_rx.recv() {
                    worker.run();
                    if done_tx.send(()).is_err() {
                        return;
                    }
                }
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(io::Error::other("fs-worker thread ended while starting"));
            }
        }
        Ok(WorkerThread {
            jobs: Some(jobs),
            finished,
            running: None,
            thread: Some(thread),
        })
    }

    /// Hands an activated device's queues to the thread.
    pub fn start(&mut self, worker: Worker) -> io::Result<()> {
        if self.running.is_some() {
            return Err(io::Error::other("virtio-fs worker already running"));
        }
        let stop = worker.stop.try_clone()?;
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("fs-worker thread is gone"))?
            .send(worker)
            .map_err(|_| io::Error::other("fs-worker thread is gone"))?;
        self.running = Some(stop);
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Tells the current worker to stop and waits until it did. It finishes
    /// the request it is in (FUSE calls are not interruptible) and leaves
    /// queued ones alone.
    pub fn stop(&mut self) {
        let Some(stop) = self.running.take() else {
            return;
        };
        if let Err(e) = stop.write(1) {
            // Without the wakeup the wait would hang; leave the worker be.
            log::error!("virtio-fs: cannot signal the worker to stop: {e}");
            return;
        }
        // Err: the thread is gone (it panicked); nothing to wait for.
        let _ = self.finished.recv();
    }
}

impl Drop for WorkerThread {
    fn drop(&mut self) {
        self.stop();
        // Closing the job channel ends the thread's loop.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("virtio-fs: worker thread panicked");
            }
        }
    }
}

impl Worker {
    fn run(mut self) {
        let epoll = match self.setup_epoll() {
            Ok(e) => e,
            Err(e) => {
                log::error!("virtio-fs: worker cannot set up epoll: {e}; device stops");
                return;
            }
        };
        // Kicks that came before the epoll existed are still pending in
        // their eventfds; chains made available without a kick are picked
        // up here.
        let mut broken = false;
        for q in 0..self.queues.len() {
            self.process(q, &mut broken);
        }
        let mut events = [EpollEvent::default(); 4];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio-fs: worker epoll_wait failed: {e}; device stops");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    STOP_TOKEN => return,
                    q => {
                        let q = q as usize;
                        self.drain_kick(q);
                        self.process(q, &mut broken);
                    }
                }
            }
        }
    }

    fn setup_epoll(&self) -> io::Result<Epoll> {
        use std::os::unix::io::AsRawFd;
        let epoll = Epoll::new()?;
        for (i, kick) in self.kicks.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                kick.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        epoll.ctl(
            ControlOperation::Add,
            self.stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        Ok(epoll)
    }

    fn drain_kick(&self, q: usize) {
        if let Some(kick) = self.kicks.get(q) {
            if let Err(e) = kick.read() {
                if e.kind() != io::ErrorKind::WouldBlock {
                    log::warn!("virtio-fs: queue {q} kick read failed: {e}");
                }
            }
        }
    }

    /// Handle what queue `q` holds and interrupt the guest if needed. After a
    /// used ring could not be written the device stops using its queues
    /// (kicks are still drained, so the thread does not spin).
    fn process(&mut self, q: usize, broken: &mut bool) {
        if *broken {
            return;
        }
        let Some(queue) = self.queues.get_mut(q) else {
            return;
        };
        match self.handler.process_queue(&self.mem, queue) {
            Ok(true) => {
                // Without VIRTIO_RING_F_EVENT_IDX (not offered) this is
                // always true.
                if queue.needs_notification(&self.mem).unwrap_or(true) {
                    if let Err(e) = self.interrupt.signal_used_queue() {
                        log::error!("virtio-fs: cannot signal used queue: {e}");
                    }
                }
            }
            Ok(false) => {}
            Err(e) => {
                log::error!("virtio-fs: cannot update used ring of queue {q}: {e}; device stops");
                *broken = true;
            }
        }
    }
}

/// Give this thread its own umask/cwd/root (`unshare(CLONE_FS)`) and set the
/// umask to 0: `PassthroughFs` applies the guest's umask itself, and the
/// process-wide umask must stay as it is for the rest of the VMM.
fn own_fs_state() {
    // SAFETY: plain syscalls without pointers; unshare(CLONE_FS) only
    // detaches the calling thread's fs_struct.
    if unsafe { libc::unshare(libc::CLONE_FS) } == 0 {
        // SAFETY: as above; affects only this thread's fs_struct now.
        unsafe { libc::umask(0) };
    } else {
        log::warn!(
            "virtio-fs: unshare(CLONE_FS) failed: {}; files get the process umask applied",
            io::Error::last_os_error()
        );
    }
}
