//! create, start, state, kill, delete, run.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use husk::config::HuskConfig;
use husk::container::bundle::Bundle;
use husk::container::sizing::{vm_size, VmSize};
use husk::container::state::{process_alive, StoreError};
use husk::container::{share, validate_id, State, Status, Store};
use husk::hooks::{self, Kind};
use husk::monitor::{self, CreateRequest};
use husk_protocol::{ExitStatus, PassedFd, Request};

#[derive(clap::Args, Clone)]
pub struct CreateArgs {
    /// Path to the bundle directory.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket to send the pty master to (the container gets a terminal).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Write the container's pid (the monitor's) to this file.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Accepted for compatibility (the guest always pivots).
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for compatibility.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass our fds 3..3+N-1 to the container's process as its own (pipes,
    /// FIFOs, stream sockets and /dev/null; anything else is refused).
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Return once the container started.
    #[arg(short, long)]
    pub detach: bool,
}

fn husk_config() -> anyhow::Result<husk::config::Resolved> {
    let path = std::env::var_os("HUSK_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(husk::config::DEFAULT_CONFIG_PATH));
    let cfg = HuskConfig::load(&path)?;
    let exe = std::env::current_exe().context("cannot find own executable")?;
    let r = cfg.resolve(&exe);
    for (what, p) in [
        ("guest kernel", &r.kernel),
        ("guest initrd", &r.initrd),
        ("husk-vmm", &r.vmm),
    ] {
        if !p.exists() {
            bail!(
                "{what} {} does not exist (set it in {})",
                p.display(),
                path.display()
            );
        }
    }
    Ok(r)
}

/// Removes a container's state directory and everything staged in it.
fn cleanup(dir: &Path) -> anyhow::Result<()> {
    // The monitor undoes its network setup when the VM ends; after a SIGKILL it could not.
    husk::network::disconnect_recorded(dir)?;
    husk::cgroups::remove(dir)?;
    share::teardown(&monitor::share_dir(dir))?;
    let vm_dir = monitor::vm_dir(dir);
    if !vm_dir.starts_with(dir) {
        match std::fs::remove_dir_all(&vm_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow!("cannot remove {}: {e}", vm_dir.display())),
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow!("cannot remove {}: {e}", dir.display())),
    }
}

/// Writes the pid file atomically (temp file + rename), as runc does. The
/// directory may be shared with others (`/run`, a podman tmp dir): the temp
/// file is created O_EXCL|O_NOFOLLOW so a planted symlink is never followed,
/// and a stale one is unlinked (which removes a link, not its target) first.
pub(super) fn write_pid_file(path: &Path, pid: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".husk-tmp");
    let tmp = PathBuf::from(tmp);
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
    };
    let mut f = match create() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&tmp)
                .with_context(|| format!("cannot remove stale {}", tmp.display()))?;
            create()
        }
        other => other,
    }
    .with_context(|| format!("cannot write pid file {}", tmp.display()))?;
    f.write_all(pid.to_string().as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write pid file {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write pid file {}", path.display()))
}

/// `--preserve-fds N`: our fds 3..3+N-1, each checked to be something that
/// can be carried into the VM (`husk::passfd`); anything else is refused
/// before anything is created, instead of the process silently starting
/// without it.
pub(super) fn check_preserved_fds(n: u32) -> anyhow::Result<Vec<PassedFd>> {
    Ok(husk::passfd::check(n)?)
}

/// Makes a relay process (monitor, exec monitor) inherit our passed fds and
/// the sync pipe's write end, and nothing else of ours.
pub(super) fn inherit_passed_fds(cmd: &mut Command, n: usize, sync: RawFd) {
    // SAFETY: the closure only makes fcntl/close_range calls (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || husk::passfd::inherit_only(n, sync));
    }
}

/// Creates the container; returns the monitor's process handle.
pub fn create(store: &Store, a: &CreateArgs) -> anyhow::Result<std::process::Child> {
    validate_id(&a.id)?;
    let passed_fds = check_preserved_fds(a.preserve_fds)?;
    // Everything that can be wrong with the input is checked before anything
    // is written, so a bad request leaves no trace.
    let bundle = Bundle::load(&a.bundle)?;
    husk::hooks::validate(&bundle.spec)?;
    husk::network::plan(&bundle.spec)?;
    let cfg = husk_config()?;
    let size = vm_size(
        &bundle.spec,
        VmSize {
            memory_mib: cfg.memory_mib,
            vcpus: cfg.vcpus,
        },
    )?;
    let dir = store.claim(&a.id)?;
    match create_in(store, &dir, a, bundle, cfg, size, passed_fds) {
        Ok(child) => Ok(child),
        Err(e) => {
            let _ = cleanup(&dir);
            Err(e)
        }
    }
}

fn create_in(
    store: &Store,
    dir: &Path,
    a: &CreateArgs,
    bundle: Bundle,
    cfg: husk::config::Resolved,
    size: VmSize,
    passed_fds: Vec<PassedFd>,
) -> anyhow::Result<std::process::Child> {
    let passed = passed_fds.len();
    let share_dir = monitor::share_dir(dir);
    share::prepare(&share_dir)?;
    let mut guest_spec = bundle.spec.clone();
    share::stage(
        &share_dir,
        &a.id,
        &bundle.dir,
        &bundle.rootfs,
        &mut guest_spec,
    )?;
    let req = CreateRequest {
        id: a.id.clone(),
        spec: guest_spec,
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        created: State::now_rfc3339(),
        vmm: cfg.vmm,
        kernel: cfg.kernel,
        initrd: cfg.initrd,
        memory_mib: size.memory_mib,
        vcpus: size.vcpus,
        console_socket: a
            .console_socket
            .as_ref()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
        no_jail: cfg.no_jail,
        passed_fds,
    };
    std::fs::write(dir.join("create.json"), serde_json::to_vec(&req)?)?;

    let (rd, wr) = nix::unistd::pipe()?;
    nix::fcntl::fcntl(
        rd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("--root")
        .arg(&store.root)
        .arg("__monitor")
        .arg(&a.id)
        .env("HUSK_SYNC_FD", wr.as_raw_fd().to_string());
    // The monitor is the pid we report, so it lives in the container's network namespace,
    // as runc's init does: engines that asked for a new one configure /proc/<pid>/ns/net
    // after create (podman with --userns, `ctr run --cni`), so it must be a fresh one, never
    // the host's; and `--network container:<this>` names the netns this VM carries.
    match husk::network::plan(&bundle.spec)? {
        husk::network::Plan::New => {
            // SAFETY: unshare(2) only, between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::unshare(libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        husk::network::Plan::Join(path) => {
            let ns = std::fs::File::open(&path)
                .with_context(|| format!("linux.namespaces[network].path {}", path.display()))?;
            // SAFETY: setns(2) on a descriptor we own, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    }
    inherit_passed_fds(&mut cmd, passed, wr.as_raw_fd());
    let child = cmd.spawn().context("cannot start the container monitor")?;
    drop(wr);
    // The monitor has them now; our copies would keep pipes open (and
    // hooks must not inherit them).
    husk::passfd::close_passed(passed);
    let mut child = child;
    if let Err(e) = super::sync::read_within(rd, super::sync::create_timeout()) {
        let _ = child.kill();
        let _ = child.wait();
        bail!("{e}");
    }
    // The runtime environment exists (VM up, container created in the
    // guest, pid known): prestart and createRuntime, then createContainer,
    // as runc orders them. A failure undoes the create.
    let hooks = [Kind::Prestart, Kind::CreateRuntime, Kind::CreateContainer];
    if let Err(e) = hooks.iter().try_for_each(|&k| {
        let state = hooks::state_json(k, &a.id, Some(child.id() as i32), &bundle.dir, &bundle.spec);
        hooks::run(k, &bundle.spec, &state, &bundle.dir)
    }) {
        let _ = delete(store, &a.id, true);
        let _ = child.wait();
        return Err(e.into());
    }
    if let Some(p) = &a.pid_file {
        write_pid_file(p, child.id())?;
    }
    Ok(child)
}

pub fn start(store: &Store, id: &str) -> anyhow::Result<()> {
    let mut st = store.load(id)?;
    match st.status() {
        Status::Created => {}
        Status::Stopped => bail!("cannot start a container that has stopped"),
        Status::Running => bail!("cannot start an already running container"),
        s => bail!("cannot start a container in the {s} state"),
    }
    let spec = monitor::load_create_request(&store.dir(id)?)
        .map_err(|e| anyhow!(e))?
        .spec;
    let state = |k| hooks::state_json(k, id, Some(st.pid), &st.bundle, &spec);
    // startContainer runs before the user's process does; if it fails the
    // process never runs and the container ends, as with runc (whose init
    // dies at that point).
    if let Err(e) = hooks::run(
        Kind::StartContainer,
        &spec,
        &state(Kind::StartContainer),
        &st.bundle,
    ) {
        let _ = kill(store, id, Some("SIGKILL"), true);
        return Err(e.into());
    }
    // A network the engine set up since create, in the netns of the pid we reported
    // (husk::network::Spares): joined to the VM's spare NIC, and handed to the container.
    if husk::network::requested(&spec)? == husk::network::Plan::New {
        let netns = PathBuf::from(format!("/proc/{}/ns/net", st.pid));
        let late = || -> anyhow::Result<()> {
            if let Some(network) = husk::network::Spares::late_attach(&netns)? {
                monitor::agent(store, id)?
                    .expect_ok(&Request::ConfigureContainerNetwork {
                        id: id.to_string(),
                        network: Box::new(network),
                    })
                    .context("guest network")?;
            }
            Ok(())
        };
        // As with a failed startContainer hook, the process never runs.
        if let Err(e) = late() {
            let _ = kill(store, id, Some("SIGKILL"), true);
            return Err(e);
        }
    }
    monitor::agent(store, id)?.expect_ok(&Request::StartContainer { id: id.to_string() })?;
    st.started = true;
    store.save(&st)?;
    // A poststart failure is a warning (runtime spec): the container runs on.
    for e in hooks::run_all(Kind::Poststart, &spec, &state(Kind::Poststart), &st.bundle) {
        eprintln!("husk: warning: {e}");
    }
    Ok(())
}

pub fn state(store: &Store, id: &str) -> anyhow::Result<()> {
    let st = store.load(id)?;
    println!("{}", serde_json::to_string_pretty(&st.oci())?);
    Ok(())
}

/// How long SIGKILL and `delete --force` wait for the agent before they
/// kill the monitor and the VMM on the host: a guest that does not answer
/// (or trickles its answer) must not keep a container alive.
const KILL_GRACE: Duration = Duration::from_secs(1);

pub fn kill(store: &Store, id: &str, signal: Option<&str>, all: bool) -> anyhow::Result<()> {
    // runc's order: the container first, then the signal.
    let st = store.load(id)?;
    let sig = husk::signal::parse(signal.unwrap_or("SIGTERM"))?;
    if st.status() == Status::Stopped {
        bail!("container not running");
    }
    let req = Request::Signal {
        id: id.to_string(),
        exec_id: None,
        signal: sig,
        all,
    };
    if sig != libc::SIGKILL {
        monitor::agent(store, id)?.expect_ok(&req)?;
        return Ok(());
    }
    let asked = monitor::agent_within(store, id, KILL_GRACE).and_then(|mut a| a.expect_ok(&req));
    if asked.is_err() {
        // The container dies with its monitor (conmon sees SIGKILL, as with
        // runc), the VMM with both (PR_SET_PDEATHSIG).
        kill_host_processes(&st);
    }
    Ok(())
}

/// SIGKILLs the monitor and the VMM of `st`, if they are still the
/// processes `state.json` recorded.
fn kill_host_processes(st: &State) {
    for (pid, start) in [(st.pid, st.pid_start), (st.vmm_pid, st.vmm_pid_start)] {
        if process_alive(pid, start) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub fn delete(store: &Store, id: &str, force: bool) -> anyhow::Result<()> {
    validate_id(id)?;
    let st = match store.load(id) {
        Ok(st) => st,
        Err(StoreError::NotExist(_)) => {
            // A create that died half-way leaves a directory without state:
            // clean it, but only --force calls that a success.
            let dir = store.dir(id)?;
            let existed = dir.exists();
            cleanup(&dir)?;
            if force || existed {
                return Ok(());
            }
            bail!("container does not exist");
        }
        Err(e) => {
            if !force {
                return Err(e.into());
            }
            return cleanup(&store.dir(id)?);
        }
    };
    let status = st.status();
    if status != Status::Stopped {
        // runc 1.1 deletes a created container without --force (its init
        // never ran); running and paused ones need --force.
        if !force && status != Status::Created {
            bail!("cannot delete container {id} that is not stopped: {status}");
        }
        if let Ok(mut agent) = monitor::agent_within(store, id, KILL_GRACE) {
            let _ = agent.request(&Request::Signal {
                id: id.to_string(),
                exec_id: None,
                signal: libc::SIGKILL,
                all: true,
            });
        }
    }
    // Whatever is left of the monitor and the VMM goes now.
    kill_host_processes(&st);
    let deadline = Instant::now() + Duration::from_secs(10);
    while (process_alive(st.pid, st.pid_start) || process_alive(st.vmm_pid, st.vmm_pid_start))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let dir = store.dir(id)?;
    let spec = monitor::load_create_request(&dir).ok().map(|r| r.spec);
    cleanup(&dir)?;
    // poststop after everything is gone; a failure is a warning (runtime spec).
    if let Some(spec) = spec {
        let state = hooks::state_json(Kind::Poststop, id, None, &st.bundle, &spec);
        for e in hooks::run_all(Kind::Poststop, &spec, &state, &st.bundle) {
            eprintln!("husk: warning: {e}");
        }
    }
    Ok(())
}

pub fn run(store: &Store, a: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut monitor = create(store, &a.create)?;
    if let Err(e) = start(store, &a.create.id) {
        let _ = delete(store, &a.create.id, true);
        let _ = monitor.wait();
        return Err(e);
    }
    if a.detach {
        return Ok(ExitCode::SUCCESS);
    }
    // Foreground: the container's stdio is ours (the monitor inherited it);
    // when it ends, clean up and end the same way.
    let status = monitor.wait()?;
    let _ = delete(store, &a.create.id, true);
    use std::os::unix::process::ExitStatusExt;
    let status = match (status.code(), status.signal()) {
        (Some(c), _) => ExitStatus::Code(c),
        (None, Some(s)) => ExitStatus::Signal(s),
        _ => ExitStatus::Code(1),
    };
    monitor::die_like(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review F10: a symlink planted at the temp name in a shared pid-file
    /// directory is not followed (root would write through it).
    #[test]
    fn pid_file_temp_does_not_follow_symlinks() {
        let d = std::env::temp_dir().join(format!("husk-pidfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let pid_file = d.join("c.pid");
        std::os::unix::fs::symlink(&victim, d.join("c.pid.husk-tmp")).unwrap();
        write_pid_file(&pid_file, 4242).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), "4242");
        assert!(!std::fs::symlink_metadata(&pid_file).unwrap().is_symlink());
        assert!(!d.join("c.pid.husk-tmp").exists());
        // Again, over the existing file.
        write_pid_file(&pid_file, 7).unwrap();
        assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), "7");
        let _ = std::fs::remove_dir_all(&d);
    }
}
