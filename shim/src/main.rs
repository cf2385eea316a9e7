//! containerd-shim-husk-v2: containerd's runtime v2 shim for husk. One shim
//! process per sandbox owns the sandbox's microVM and serves containerd's
//! Task API (ttrpc) for every container in it.

mod error;
mod events;
mod io;
mod network;
mod process;
mod rootfs;
mod sandbox;
mod service;
mod shim;
mod stats;

pub const RUNTIME_ID: &str = "io.containerd.husk.v2";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args
        .iter()
        .skip(1)
        .any(|a| a == "-v" || a == "--version" || a == "-version")
    {
        println!(
            "{}:\n  Runtime: {RUNTIME_ID}\n  Version: {}",
            args.first()
                .map(String::as_str)
                .unwrap_or("containerd-shim-husk-v2"),
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    let config = containerd_shim::Config {
        // husk-vmm is our child and std's Child::wait reaps it: the
        // library's SIGCHLD reaper (waitpid(-1)) would steal its status.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<shim::HuskShim>(RUNTIME_ID, Some(config));
}
