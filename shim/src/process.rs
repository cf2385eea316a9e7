//! A task's process as the shim tracks it: the container's init or an exec.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use husk_protocol::ExitStatus;

use crate::io::{Io, StdioPaths};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

#[derive(Debug, Clone, Copy)]
pub struct ProcState {
    pub status: Status,
    pub pid: u32,
    pub exit: Option<Exit>,
    /// A Start is talking to the agent (no lock is held meanwhile).
    pub starting: bool,
    /// The exit came during that Start: its event waits for TaskStart's.
    pub exit_deferred: bool,
}

pub struct Process {
    pub container_id: String,
    pub exec_id: Option<String>,
    pub stdio: StdioPaths,
    state: Mutex<ProcState>,
    exited: Condvar,
    io: Mutex<Option<Io>>,
}

impl Process {
    pub fn new(
        container_id: &str,
        exec_id: Option<&str>,
        stdio: StdioPaths,
        pid: u32,
        io: Io,
    ) -> Process {
        Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.map(str::to_string),
            stdio,
            state: Mutex::new(ProcState {
                status: Status::Created,
                pid,
                exit: None,
                starting: false,
                exit_deferred: false,
            }),
            exited: Condvar::new(),
            io: Mutex::new(Some(io)),
        }
    }

    /// The id containerd knows this process by (the container id for the init).
    pub fn id(&self) -> &str {
        self.exec_id.as_deref().unwrap_or(&self.container_id)
    }

    pub fn lock(&self) -> MutexGuard<'_, ProcState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> ProcState {
        *self.lock()
    }

    pub fn io(&self) -> MutexGuard<'_, Option<Io>> {
        self.io.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the exit unless one was recorded already; true if this call
    /// did and the caller is to publish it (not while a Start is under way:
    /// containerd must hear of the start first, and [`Process::end_start`]
    /// hands the publishing to the Start).
    pub fn set_exited(&self, status: u32, at: SystemTime) -> bool {
        let mut st = self.lock();
        if st.exit.is_some() {
            return false;
        }
        st.status = Status::Stopped;
        st.exit = Some(Exit { status, at });
        self.exited.notify_all();
        if st.starting {
            st.exit_deferred = true;
            return false;
        }
        true
    }

    /// Marks a Start under way; false if one already is.
    pub fn begin_start(&self) -> bool {
        let mut st = self.lock();
        !std::mem::replace(&mut st.starting, true)
    }

    /// Ends a Start: on success the process runs (unless it already exited)
    /// with `pid` if given. Returns the state and whether an exit that came
    /// meanwhile is still to be published.
    pub fn end_start(&self, ok: bool, pid: Option<u32>) -> (ProcState, bool) {
        let mut st = self.lock();
        st.starting = false;
        let deferred = std::mem::take(&mut st.exit_deferred);
        if ok {
            if st.exit.is_none() {
                st.status = Status::Running;
            }
            if let Some(pid) = pid {
                st.pid = pid;
            }
        }
        (*st, deferred)
    }

    pub fn wait(&self) -> Exit {
        let mut st = self.lock();
        loop {
            if let Some(e) = st.exit {
                return e;
            }
            st = self.exited.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn wait_timeout(&self, t: Duration) -> Option<Exit> {
        let st = self.lock();
        let (st, _) = self
            .exited
            .wait_timeout_while(st, t, |s| s.exit.is_none())
            .unwrap_or_else(|p| p.into_inner());
        st.exit
    }
}

/// What containerd expects as an exit status: the code, or 128 + the signal.
pub fn exit_code(s: ExitStatus) -> u32 {
    match s {
        ExitStatus::Code(c) => (c & 0xff) as u32,
        ExitStatus::Signal(s) => 128 + (s & 0x7f) as u32,
    }
}

pub fn timestamp(t: SystemTime) -> MessageField<Timestamp> {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    MessageField::some(Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(ExitStatus::Code(0)), 0);
        assert_eq!(exit_code(ExitStatus::Code(3)), 3);
        assert_eq!(exit_code(ExitStatus::Code(256 + 7)), 7);
        assert_eq!(exit_code(ExitStatus::Signal(9)), 137);
        assert_eq!(exit_code(ExitStatus::Signal(15)), 143);
    }

    #[test]
    fn first_exit_wins() {
        let p = Process::new("c", None, StdioPaths::default(), 1, Io::detached());
        assert_eq!(p.wait_timeout(Duration::from_millis(1)), None);
        let t = SystemTime::now();
        assert!(p.set_exited(3, t));
        assert!(!p.set_exited(137, SystemTime::now()));
        assert_eq!(p.wait(), Exit { status: 3, at: t });
        assert_eq!(p.snapshot().status, Status::Stopped);
    }

    #[test]
    fn exit_during_start_is_published_after_it() {
        let p = Process::new("c", None, StdioPaths::default(), 1, Io::detached());
        assert!(p.begin_start());
        assert!(!p.begin_start(), "one start at a time");
        // No lock is held across the guest round trip: state is readable.
        assert_eq!(p.snapshot().status, Status::Created);
        assert!(
            !p.set_exited(137, SystemTime::now()),
            "deferred to the start"
        );
        let (st, deferred) = p.end_start(true, Some(9));
        assert!(deferred);
        assert_eq!(st.status, Status::Stopped);
        assert_eq!(st.pid, 9);
        let q = Process::new("c", None, StdioPaths::default(), 1, Io::detached());
        assert!(q.begin_start());
        let (st, deferred) = q.end_start(true, None);
        assert!(!deferred);
        assert_eq!(st.status, Status::Running);
        assert!(q.set_exited(0, SystemTime::now()));
    }
}
