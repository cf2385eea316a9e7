//! State and VM directories are 0700 whatever the umask (review F10): one
//! test in its own executable, because the umask is process-wide.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use husk::container::Store;
use husk::vm::{Vm, VmSpec};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn state_and_vm_dirs_are_private_under_umask_000() {
    let base = std::env::temp_dir().join(format!("hk-modes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    // SAFETY: the only test in this executable.
    unsafe { libc::umask(0) };

    let store = Store::new(base.join("root"));
    let dir = store.claim("c1").unwrap();
    assert_eq!(mode(&store.root), 0o700);
    assert_eq!(mode(&dir), 0o700);

    // The VMM is /bin/true: it exits at once, after the directory is made.
    let vm_dir = husk::monitor::vm_dir(&dir);
    let spec = VmSpec::new("/bin/true".into(), "/k".into(), "/i".into());
    assert!(Vm::launch(&spec, &vm_dir).is_err());
    assert_eq!(mode(&vm_dir), 0o700);
    // One left by someone else with an open mode is tightened.
    std::fs::set_permissions(&vm_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(Vm::launch(&spec, &vm_dir).is_err());
    assert_eq!(mode(&vm_dir), 0o700);

    let _ = std::fs::remove_dir_all(&base);
}
