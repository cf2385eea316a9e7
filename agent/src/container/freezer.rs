//! Pause and resume: the cgroup v2 freezer (`cgroup.freeze`, confirmed by
//! `frozen` in `cgroup.events`).

use std::fs;
use std::time::{Duration, Instant};

use husk_protocol::{ContainerStatus, Response};

use super::cgroups::Cgroup;
use super::process::lock;
use super::{err, status_name, Phase, Registry};

/// How long a freeze or thaw may take to settle.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `frozen` value of a `cgroup.events` text; None when it has none.
pub fn parse_frozen(events: &str) -> Option<bool> {
    events.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        match (f.next(), f.next(), f.next()) {
            (Some("frozen"), Some("1"), None) => Some(true),
            (Some("frozen"), Some("0"), None) => Some(false),
            _ => None,
        }
    })
}

impl Cgroup {
    /// Freezes or thaws every process of the cgroup and waits until the
    /// kernel says it is done (a task in an uninterruptible sleep delays it).
    pub fn set_frozen(&self, frozen: bool, patience: Duration) -> Result<(), String> {
        let file = self.path.join("cgroup.freeze");
        fs::write(&file, if frozen { "1" } else { "0" })
            .map_err(|e| format!("write {}: {e}", file.display()))?;
        let events = self.path.join("cgroup.events");
        let deadline = Instant::now() + patience;
        loop {
            let text = fs::read_to_string(&events)
                .map_err(|e| format!("read {}: {e}", events.display()))?;
            match parse_frozen(&text) {
                Some(f) if f == frozen => return Ok(()),
                Some(_) => {}
                None => return Err(format!("{}: no frozen entry", events.display())),
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the cgroup did not become {} within {patience:?}",
                    if frozen { "frozen" } else { "thawed" }
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Registry {
    pub fn pause(&self, id: &str) -> Response {
        let c = match self.get(id) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let _ops = lock(&c.ops);
        let started = match c.status() {
            ContainerStatus::Running => true,
            // runc pauses a created container too; its init stays frozen
            // where it waits for start.
            ContainerStatus::Created => false,
            ContainerStatus::Paused => return err(format!("container {id} is already paused")),
            s => return err(format!("container {id} is not running: {}", status_name(s))),
        };
        if let Err(e) = c.cgroup.set_frozen(true, FREEZE_TIMEOUT) {
            let _ = c.cgroup.set_frozen(false, FREEZE_TIMEOUT);
            return err(format!("pause container {id}: {e}"));
        }
        // A start may have run meanwhile (it does not take `ops`).
        let mut phase = lock(&c.phase);
        let started = started || *phase == Phase::Running;
        *phase = Phase::Paused { started };
        Response::Ok
    }

    pub fn resume(&self, id: &str) -> Response {
        let c = match self.get(id) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let _ops = lock(&c.ops);
        let started = match (c.status(), *lock(&c.phase)) {
            (ContainerStatus::Paused, Phase::Paused { started }) => started,
            (s, _) => return err(format!("container {id} is not paused: {}", status_name(s))),
        };
        if let Err(e) = c.cgroup.set_frozen(false, FREEZE_TIMEOUT) {
            return err(format!("resume container {id}: {e}"));
        }
        *lock(&c.phase) = if started {
            Phase::Running
        } else {
            Phase::Created
        };
        Response::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::parse_frozen;

    #[test]
    fn frozen_entry() {
        assert_eq!(parse_frozen("populated 1\nfrozen 1\n"), Some(true));
        assert_eq!(parse_frozen("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(parse_frozen("populated 1\n"), None);
        assert_eq!(parse_frozen("frozen 2\n"), None);
        assert_eq!(parse_frozen("frozen 1 x\n"), None);
        assert_eq!(parse_frozen(""), None);
    }
}
