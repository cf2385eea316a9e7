//! Built only with the `fuzzing` feature, for `fuzz/fuzz_targets/fs_request.rs`:
//! the request layer (`request::RequestHandler`) over `ConfinedFs` over
//! `PassthroughFs`, exactly as the `fs-worker` thread runs it, but called
//! synchronously on the fuzzer's thread (no worker thread, no epoll, no
//! kicks), so one input is one deterministic run.

use std::io;
use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use virtio_queue::Queue;

use super::confined::ConfinedFs;
use super::metrics::{Counters, FsMetrics};
use super::request::RequestHandler;
use super::FsOptions;
use crate::memory::GuestMemoryMmap;

/// Most bytes a chain may offer in each direction (`request::MAX_CHAIN_BYTES`).
pub const MAX_CHAIN_BYTES: u64 = super::request::MAX_CHAIN_BYTES;

/// A FUSE server on one directory plus the device's chain handling.
pub struct FuzzFs {
    handler: RequestHandler,
    counters: Arc<Counters>,
}

impl FuzzFs {
    /// Serve `root` (absolute, canonical, a directory). Like `Fs::new` minus
    /// the tag, config space and worker; `PassthroughFs::import` sets the
    /// umask to 0, so call it from a thread with its own fs_struct
    /// (`unshare(CLONE_FS)`), as the `fs-worker` thread is.
    pub fn new(root: &str, opts: &FsOptions) -> io::Result<FuzzFs> {
        let fs = ConfinedFs::new(root, opts)?;
        let counters = Arc::new(Counters::default());
        Ok(FuzzFs {
            handler: RequestHandler::new(Arc::new(Server::new(fs)), counters.clone()),
            counters,
        })
    }

    /// What the worker does on a kick: handle every available chain of
    /// `queue`; `Ok(true)` if any was used.
    pub fn process_queue(
        &self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
    ) -> Result<bool, virtio_queue::Error> {
        self.handler.process_queue(mem, queue)
    }

    pub fn metrics(&self) -> FsMetrics {
        self.counters.snapshot()
    }
}
