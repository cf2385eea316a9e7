//! The virtio-fs device model: config space, features, activation and reset.
//! Queue work happens on the worker thread (`super::worker`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use fuse_backend_rs::api::server::Server;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::confined::ConfinedFs;
use super::metrics::{Counters, FsMetrics};
use super::request::RequestHandler;
use super::worker::{ThreadStart, Worker, WorkerThread};
use super::{FsError, FsOptions, NUM_QUEUES, QUEUE_MAX_SIZE, TAG_LEN};
use crate::devices::virtio::{
    ActivateError, ActivatedQueue, DeviceCommon, Interrupt, VirtioDevice, TYPE_FS,
    VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemoryMmap;

/// Config space: `u8 tag[36]; le32 num_request_queues;`.
const CONFIG_LEN: usize = TAG_LEN + 4;

/// Serialises the process-umask juggling around `PassthroughFs::import`.
pub(crate) static UMASK_LOCK: Mutex<()> = Mutex::new(());

/// A virtio-fs device exporting one host directory.
///
/// Shared as `Arc<Mutex<Fs>>` with the virtio-mmio transport, which calls the
/// [`VirtioDevice`] methods from vCPU threads. Requests are served by a
/// worker thread (`fs-worker`), started by [`Fs::start_worker_thread`] before
/// the guest runs (or else on the first activation); a reset stops the work,
/// not the thread. The device does not need the VMM's event loop.
pub struct Fs {
    tag: String,
    shared_dir: PathBuf,
    /// Features, queue sizes and config; the queues themselves go to the worker.
    common: DeviceCommon,
    server: Arc<Server<ConfinedFs>>,
    counters: Arc<Counters>,
    worker: Option<WorkerThread>,
}

impl Fs {
    /// Export `shared_dir` under `tag` (1 to 36 bytes, no NUL; the guest
    /// mounts it with `mount -t virtiofs <tag> <dir>`).
    ///
    /// The directory is resolved (symlinks, relative paths) and opened here,
    /// once: later changes to the path do not affect the device, and errors
    /// surface before the guest runs. Briefly sets the process umask (the
    /// passthrough file system's import insists on `umask(0)`); call it before
    /// other threads create files.
    pub fn new(tag: &str, shared_dir: impl Into<PathBuf>, opts: FsOptions) -> Result<Fs, FsError> {
        Self::with_fd_budget(tag, shared_dir, opts, super::fd_budget(1))
    }

    /// Like [`Fs::new`]; the guest may hold at most `max_fds` inodes (each
    /// an `O_PATH` fd on the host) plus open files and directories at once:
    /// beyond it LOOKUP, OPEN, CREATE, ... get `ENFILE` until it sends
    /// FORGET or RELEASE (see [`super::fd_budget`]).
    pub fn with_fd_budget(
        tag: &str,
        shared_dir: impl Into<PathBuf>,
        opts: FsOptions,
        max_fds: usize,
    ) -> Result<Fs, FsError> {
        validate_tag(tag)?;
        let requested = shared_dir.into();
        let path = std::fs::canonicalize(&requested).map_err(|source| FsError::SharedDir {
            path: requested.clone(),
            source,
        })?;
        let meta = std::fs::metadata(&path).map_err(|source| FsError::SharedDir {
            path: requested.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(FsError::NotADirectory(requested));
        }
        let root = path
            .to_str()
            .ok_or_else(|| FsError::NonUtf8Path(path.clone()))?;

        let fs = {
            let _guard = UMASK_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
            // SAFETY: umask() only swaps the process file mode mask.
            let old = unsafe { libc::umask(0o077) };
            let fs = ConfinedFs::with_budget(root, &opts, max_fds);
            // SAFETY: as above; restores what `import` overwrote.
            unsafe { libc::umask(old) };
            fs
        }
        .map_err(|source| FsError::Backend {
            path: path.clone(),
            source,
        })?;

        let mut config = [0u8; CONFIG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        // No device-specific features: no notification queue
        // (VIRTIO_FS_F_NOTIFICATION), no indirect descriptors, no event index.
        let common = DeviceCommon::new(
            "virtio-fs",
            TYPE_FS,
            VIRTIO_F_VERSION_1,
            &[QUEUE_MAX_SIZE; NUM_QUEUES],
            config.to_vec(),
        )
        .map_err(FsError::EventFd)?;
        log::info!("virtio-fs: tag {tag:?} exports {}", path.display());
        Ok(Fs {
            tag: tag.to_owned(),
            shared_dir: path,
            common,
            server: Arc::new(Server::new(fs)),
            counters: Arc::new(Counters::default()),
            worker: None,
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The exported directory (canonical path).
    pub fn shared_dir(&self) -> &Path {
        &self.shared_dir
    }

    /// Whether the worker thread is serving the queues.
    pub fn is_activated(&self) -> bool {
        self.worker.as_ref().is_some_and(WorkerThread::is_running)
    }

    /// Starts the `fs-worker` thread now, running `on_start` there first
    /// (the VMM installs the thread's seccomp filter): after this, activation
    /// spawns no thread.
    pub fn start_worker_thread(&mut self, on_start: Option<ThreadStart>) -> std::io::Result<()> {
        if self.worker.is_none() {
            self.worker = Some(WorkerThread::spawn(on_start)?);
        }
        Ok(())
    }

    pub fn acked_features(&self) -> u64 {
        self.common.acked_features()
    }

    /// Counters of rejected/failed requests (see [`FsMetrics`]).
    pub fn metrics(&self) -> FsMetrics {
        self.counters.snapshot()
    }
}

fn validate_tag(tag: &str) -> Result<(), FsError> {
    let reason = if tag.is_empty() {
        "must not be empty"
    } else if tag.len() > TAG_LEN {
        "longer than 36 bytes"
    } else if tag.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(FsError::InvalidTag {
        tag: tag.to_owned(),
        reason,
    })
}

impl VirtioDevice for Fs {
    fn common(&self) -> &DeviceCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        if self.is_activated() {
            return Err(ActivateError::Device("virtio-fs is already active".into()));
        }
        let (queues, kicks) = self.common.take_queues(&mem, queues)?;
        let worker = Worker {
            handler: RequestHandler::new(self.server.clone(), self.counters.clone()),
            mem,
            interrupt,
            queues,
            kicks,
            stop: EventFd::new(EFD_NONBLOCK)?,
        };
        if self.worker.is_none() {
            self.worker = Some(WorkerThread::spawn(None)?);
        }
        if let Some(thread) = self.worker.as_mut() {
            thread.start(worker)?;
        }
        log::info!("virtio-fs: tag {:?} activated", self.tag);
        Ok(())
    }

    /// Stops the worker (after the request it is in, if any). The FUSE
    /// session state (looked-up inodes, open handles) is kept: a new driver
    /// starts with FUSE_INIT and fresh lookups from the same root.
    fn reset(&mut self) -> bool {
        if let Some(thread) = self.worker.as_mut().filter(|t| t.is_running()) {
            thread.stop();
            log::info!("virtio-fs: tag {:?} reset", self.tag);
        }
        self.common.reset();
        true
    }
}
