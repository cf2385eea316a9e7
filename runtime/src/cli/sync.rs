//! Waiting for a monitor's verdict (`ok` / `error: ...` on the sync pipe)
//! with a deadline.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use husk::monitor;

/// How long `create` (and a detached `exec`) waits for its monitor. Every
/// step of a monitor has a deadline of its own (VM boot, each agent request,
/// the guest's setup); this one holds whatever else could go wrong, so no
/// spec and no guest can make `create` or `run` hang (issue 15).
/// `HUSK_CREATE_TIMEOUT` (seconds) overrides it.
const CREATE_TIMEOUT: Duration = Duration::from_secs(240);

pub fn create_timeout() -> Duration {
    std::env::var("HUSK_CREATE_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(CREATE_TIMEOUT)
}

/// `monitor::read_sync` with a deadline: the monitor's one line, or an
/// error once `timeout` has passed without it (the caller kills the monitor).
pub fn read_within(fd: OwnedFd, timeout: Duration) -> anyhow::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "the container was not created within {}s (its monitor or guest did not answer)",
                timeout.as_secs()
            );
        }
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) => continue,
            // The line (or EOF) is there: read_sync takes it without waiting.
            Ok(_) => return monitor::read_sync(fd).map_err(|e| anyhow!(e)),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("cannot wait for the monitor: {e}"),
        }
    }
}
