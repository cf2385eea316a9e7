//! A fresh scratch directory per fuzzing process:
//! `$TMPDIR/husk-fuzz-<target>-<pid>`. Directories left by processes that
//! are gone (a fuzzer that crashed or was killed) are removed first.

use std::path::PathBuf;

pub fn process_dir(target: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
    let prefix = format!("husk-fuzz-{target}-");
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = tmp.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// As in every Rust program's `main` (the VMM's too): writes to a closed
/// socket fail with EPIPE instead of killing the process. libFuzzer's `main`
/// is C++ and leaves SIGPIPE at its default.
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}
