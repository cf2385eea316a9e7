//! husk-vmm's answers to bad input: one clear line, status 1, never a panic.

use std::process::Command;

use husk_tests::artifact;

fn vmm(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(artifact("HUSK_VMM"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn initrd() -> String {
    artifact("HUSK_INITRD").display().to_string()
}

#[test]
fn missing_kernel() {
    let (code, err) = vmm(&["--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "husk-vmm: cannot open kernel /nonexistent/vmlinux: No such file or directory (os error 2)\n"
    );
}

#[test]
fn kernel_that_is_not_a_kernel() {
    let (code, err) = vmm(&["--kernel", &initrd()]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        format!(
            "husk-vmm: kernel {}: not an ELF file (husk-vmm boots an uncompressed vmlinux, not a bzImage)\n",
            initrd()
        )
    );
}

#[test]
fn kernel_is_a_directory() {
    let (code, err) = vmm(&["--kernel", "/"]);
    assert_eq!(code, Some(1));
    assert_eq!(err, "husk-vmm: cannot open kernel /: not a regular file\n");
}

#[test]
fn missing_initrd() {
    let k = artifact("HUSK_KERNEL").display().to_string();
    let (code, err) = vmm(&["--kernel", &k, "--initrd", "/nope"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "husk-vmm: cannot open initrd /nope: No such file or directory (os error 2)\n"
    );
}

#[test]
fn zero_vcpus_and_tiny_memory() {
    let k = artifact("HUSK_KERNEL").display().to_string();
    let (code, err) = vmm(&["--kernel", &k, "--vcpus", "0"]);
    assert_eq!(code, Some(1));
    assert_eq!(err, "husk-vmm: --vcpus must be between 1 and 64, got 0\n");
    let (code, err) = vmm(&["--kernel", &k, "--memory-mib", "4"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "husk-vmm: --memory-mib must be between 32 and 1048576, got 4\n"
    );
}

#[test]
fn initrd_too_big_for_memory() {
    // A 40 MiB "initrd" cannot fit in a 32 MiB guest above the kernel.
    let dir = std::env::temp_dir().join(format!("husk-bigrd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("big.img");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    let k = artifact("HUSK_KERNEL").display().to_string();
    let (code, err) = vmm(&[
        "--kernel",
        &k,
        "--initrd",
        big.to_str().unwrap(),
        "--memory-mib",
        "32",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with(&format!(
            "husk-vmm: initrd {}: initrd of 41943040 bytes does not fit",
            big.display()
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
