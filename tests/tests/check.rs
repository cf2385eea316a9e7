//! `husk check` where husk's VMs run (issue 14 §3): with the tests'
//! config.toml (the kernel, initrd and husk-vmm under test) every required
//! check passes and it exits 0. Its failures on a host that cannot run
//! guests are tested on that host (`runtime/tests/cli.rs`).

use husk_tests::Husk;
use serde_json::Value;

#[test]
fn check_passes_where_vms_run() {
    let h = Husk::new("check");
    let o = h.run(&["check"]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("{text}");
    assert_eq!(
        o.status.code(),
        Some(0),
        "husk check failed here, where the VM tests run:\n{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains("ok    kvm-kind: hardware virtualization"),
        "{text}"
    );
    assert!(
        text.ends_with("husk can run containers on this host\n"),
        "{text}"
    );

    let o = h.run(&["check", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0));
    let checks: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    let config = h.config.display().to_string();
    for c in &checks {
        assert_ne!(c["status"], "fail", "{c}");
    }
    let named = |n: &str| checks.iter().find(|c| c["name"] == n).unwrap().clone();
    // The files are the ones the tests' config.toml names.
    assert!(
        named("config")["detail"]
            .as_str()
            .unwrap()
            .contains(&config),
        "{checks:?}"
    );
    let kernel = std::env::var("HUSK_KERNEL").unwrap();
    assert!(named("guest-kernel")["detail"]
        .as_str()
        .unwrap()
        .ends_with(&kernel));
    assert_eq!(named("kvm-api")["status"], "ok");
    assert_eq!(named("cgroup-controllers")["status"], "ok");
}
