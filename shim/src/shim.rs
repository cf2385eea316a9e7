//! The shim binary's lifecycle as containerd drives it: `start` (find or
//! spawn the sandbox's shim and print its address), the daemon serving the
//! Task API, and `delete` (clean up after a shim that died).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, ExitSignal, Flags, Shim, StartOpts};
use log::warn;

use crate::process::timestamp;
use crate::sandbox;
use crate::service::Service;

pub struct HuskShim {
    namespace: String,
    address: String,
    id: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
}

fn other(msg: String) -> containerd_shim::Error {
    containerd_shim::Error::Other(msg)
}

/// Removes the socket of a shim that was killed (nothing listens on it any
/// more; a shim removes its own only when it shuts down normally).
fn remove_stale_socket(path: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        if let Err(e) = std::fs::remove_file(path) {
            warn!(
                "cannot remove the dead shim's socket {}: {e}",
                path.display()
            );
        }
    }
}

impl Shim for HuskShim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        HuskShim {
            namespace: args.namespace.clone(),
            address: args.address.clone(),
            id: args.id.clone(),
            bundle,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// One shim (one VM) per sandbox: a container of a CRI pod gets the
    /// address of its sandbox's shim, which the spawned daemon finds already
    /// listening and leaves alone; anything else starts a sandbox of its own.
    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        husk::container::validate_id(&opts.id).map_err(|e| other(format!("{e}: {:?}", opts.id)))?;
        let ann = sandbox::bundle_annotations(&self.bundle).map_err(other)?;
        let group = sandbox::sandbox_id(&opts.id, Some(&ann)).map_err(other)?;
        let (_, address) = containerd_shim::spawn(opts, &group, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    /// containerd 1.6 calls this whenever its connection to the shim closes:
    /// after every normal delete too, while the sandbox's shim may still
    /// serve other containers. Only a shim that is gone has its leftovers
    /// (VM, share, cgroup) removed; the task then ends as killed.
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let group = sandbox::bundle_annotations(&self.bundle)
            .and_then(|a| sandbox::sandbox_id(&self.id, Some(&a)))
            .unwrap_or_else(|e| {
                warn!("{e}: assuming a sandbox of its own");
                self.id.clone()
            });
        let socket = containerd_shim::socket_address(&self.address, &self.namespace, &group);
        let socket = socket.strip_prefix("unix://").unwrap_or(&socket);
        let pid = match std::os::unix::net::UnixStream::connect(socket) {
            Ok(_) => None,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    remove_stale_socket(std::path::Path::new(socket));
                }
                let dir = sandbox::sandbox_dir(&self.address, &self.namespace, &group);
                sandbox::cleanup_dead(&dir)
            }
        };
        crate::rootfs::unmount(&self.bundle.join("rootfs"));
        Ok(DeleteResponse {
            pid: pid.unwrap_or(0),
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: timestamp(SystemTime::now()),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        Service::new(&self.namespace, &self.address, publisher, self.exit.clone())
    }
}
