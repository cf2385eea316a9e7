//! The state directory `<root>/<id>/`: `state.json` plus the VM's sockets and
//! the shared directory. Status is derived, never stored stale: a container is
//! `stopped` as soon as its monitor process is gone, whatever killed it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub oci_version: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339 with nanoseconds, like runc.
    pub created: String,
    pub owner: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The monitor: lives exactly as long as the container's init.
    pub pid: i32,
    /// Its start time (field 22 of /proc/PID/stat), to tell pid reuse apart.
    pub pid_start: u64,
    pub vmm_pid: i32,
    pub vmm_pid_start: u64,
    pub started: bool,
    #[serde(default)]
    pub paused: bool,
}

/// runc's `state` output.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState<'a> {
    pub oci_version: &'a str,
    pub id: &'a str,
    pub pid: i32,
    pub status: Status,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub created: &'a str,
    pub owner: &'a str,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: &'a HashMap<String, String>,
}

impl State {
    pub fn now_rfc3339() -> String {
        humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
    }

    pub fn status(&self) -> Status {
        if !process_alive(self.pid, self.pid_start) {
            Status::Stopped
        } else if self.paused {
            Status::Paused
        } else if self.started {
            Status::Running
        } else {
            Status::Created
        }
    }

    pub fn oci(&self) -> OciState<'_> {
        let status = self.status();
        OciState {
            oci_version: &self.oci_version,
            id: &self.id,
            // runc reports 0 once the init is gone.
            pid: if status == Status::Stopped {
                0
            } else {
                self.pid
            },
            status,
            bundle: &self.bundle,
            rootfs: &self.rootfs,
            created: &self.created,
            owner: &self.owner,
            annotations: &self.annotations,
        }
    }
}

/// Start time of a process in clock ticks since boot, or None if it is gone.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    // `state` is field 3; starttime field 22 ⇒ index 19 here.
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

pub fn process_alive(pid: i32, start: u64) -> bool {
    pid > 0 && process_start_time(pid) == Some(start)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // runc's wordings (libcontainer.ErrExist, ErrNotExist).
    #[error("container with given ID already exists")]
    Exists(String),
    #[error("container does not exist")]
    NotExist(String),
    #[error("cannot create state directory {0}: {1}")]
    Create(PathBuf, std::io::Error),
    #[error("state of container {0} is unreadable: {1}")]
    Corrupt(String, String),
    #[error("cannot write state of container {0}: {1}")]
    Write(String, std::io::Error),
    // runc's wording (libcontainer.ErrInvalidID).
    #[error("invalid container ID format")]
    InvalidId(String),
}

/// The `--root` directory.
#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The state directory of container `id`. Every path under `--root`
    /// goes through here, so an id is validated before it names anything
    /// (runc's rule: no `/`, no `.` or `..`, which would escape the root).
    pub fn dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        if !husk_protocol::valid_container_id(id) {
            return Err(StoreError::InvalidId(id.to_string()));
        }
        Ok(self.root.join(id))
    }

    /// Claims `id`: creating its directory is the atomic test for duplicates.
    /// The root and the directory are 0700 whatever the umask: they hold the
    /// VM's sockets.
    pub fn claim(&self, id: &str) -> Result<PathBuf, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.dir(id)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| StoreError::Create(self.root.clone(), e))?;
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StoreError::Exists(id.to_string()))
            }
            Err(e) => Err(StoreError::Create(dir, e)),
        }
    }

    pub fn load(&self, id: &str) -> Result<State, StoreError> {
        let path = self.dir(id)?.join("state.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotExist(id.to_string()))
            }
            Err(e) => return Err(StoreError::Corrupt(id.to_string(), e.to_string())),
        };
        let st: State = serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(id.to_string(), e.to_string()))?;
        // `save` writes where `st.id` says: it must be this directory.
        if st.id != id {
            return Err(StoreError::Corrupt(
                id.to_string(),
                format!("it names container {:?}", st.id),
            ));
        }
        Ok(st)
    }

    /// Writes state.json atomically (temp file + rename).
    pub fn save(&self, st: &State) -> Result<(), StoreError> {
        let dir = self.dir(&st.id)?;
        let tmp = dir.join("state.json.tmp");
        let werr = |e| StoreError::Write(st.id.clone(), e);
        let mut f = std::fs::File::create(&tmp).map_err(werr)?;
        let text = serde_json::to_vec(st).map_err(|e| werr(std::io::Error::other(e)))?;
        f.write_all(&text).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        std::fs::rename(&tmp, dir.join("state.json")).map_err(werr)
    }

    /// Ids of every container with a state directory, sorted.
    pub fn list(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("state.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| husk_protocol::valid_container_id(id))
            .collect();
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_store(tag: &str) -> Store {
        let d = std::env::temp_dir().join(format!("husk-store-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        Store::new(d)
    }

    fn state(id: &str, pid: i32, pid_start: u64) -> State {
        State {
            id: id.into(),
            oci_version: "1.0.2".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: State::now_rfc3339(),
            owner: String::new(),
            annotations: HashMap::new(),
            pid,
            pid_start,
            vmm_pid: 0,
            vmm_pid_start: 0,
            started: false,
            paused: false,
        }
    }

    #[test]
    fn claim_is_exclusive_and_round_trips() {
        let s = tmp_store("claim");
        s.claim("c1").unwrap();
        assert!(matches!(s.claim("c1"), Err(StoreError::Exists(_))));
        assert!(matches!(s.load("c1"), Err(StoreError::NotExist(_))));
        let me = std::process::id() as i32;
        let st = state("c1", me, process_start_time(me).unwrap());
        s.save(&st).unwrap();
        assert_eq!(s.load("c1").unwrap().pid, me);
        assert_eq!(s.list(), vec!["c1".to_string()]);
        let _ = std::fs::remove_dir_all(&s.root);
    }

    #[test]
    fn ids_are_validated_before_they_name_a_path() {
        let s = tmp_store("ids");
        for bad in ["../etc", "/abs/x", "..", ".", "a/b", ""] {
            let e = s.dir(bad).unwrap_err();
            assert_eq!(e.to_string(), "invalid container ID format", "{bad:?}");
            assert!(
                matches!(s.load(bad), Err(StoreError::InvalidId(_))),
                "{bad:?}"
            );
            assert!(
                matches!(s.claim(bad), Err(StoreError::InvalidId(_))),
                "{bad:?}"
            );
        }
        let mut st = state("/abs/x", 1, 1);
        assert!(matches!(s.save(&st), Err(StoreError::InvalidId(_))));
        // A state.json naming another id is not followed.
        s.claim("c2").unwrap();
        st.id = "c2".into();
        s.save(&st).unwrap();
        std::fs::write(
            s.root.join("c2/state.json"),
            std::fs::read_to_string(s.root.join("c2/state.json"))
                .unwrap()
                .replace("\"c2\"", "\"other\""),
        )
        .unwrap();
        assert!(matches!(s.load("c2"), Err(StoreError::Corrupt(_, _))));
        let _ = std::fs::remove_dir_all(&s.root);
    }

    #[test]
    fn status_follows_the_monitor() {
        let me = std::process::id() as i32;
        let start = process_start_time(me).unwrap();
        let mut st = state("x", me, start);
        assert_eq!(st.status(), Status::Created);
        st.started = true;
        assert_eq!(st.status(), Status::Running);
        // Same pid, other start time: a reused pid is not our monitor.
        st.pid_start = start + 1;
        assert_eq!(st.status(), Status::Stopped);
        assert_eq!(st.oci().pid, 0);
    }

    #[test]
    fn oci_state_shape() {
        let st = state("x", 0, 0);
        let v: serde_json::Value = serde_json::to_value(st.oci()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "bundle",
                "created",
                "id",
                "ociVersion",
                "owner",
                "pid",
                "rootfs",
                "status"
            ]
        );
        assert_eq!(v["status"], "stopped");
    }
}
