//! OCI hooks through the `husk` CLI, with real guests: every hook runs on
//! the host at its point of the lifecycle with the state on its stdin; a
//! hook that must succeed and fails (or runs past its timeout) undoes the
//! create; poststart and poststop failures are warnings.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use husk_tests::bundle::TestBundle;
use husk_tests::{vm_dir, Husk};
use serde_json::{json, Value};

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A hook that appends its kind to `dir/order` and saves its stdin to
/// `dir/KIND.json`, then runs `then` (a shell snippet).
fn recorder(dir: &Path, kind: &str, then: &str) -> Value {
    json!({
        "path": "/bin/sh",
        "args": ["sh", "-c", format!(
            "cat > {d}/{kind}.json && echo {kind} >> {d}/order; {then}",
            d = dir.display()
        )],
        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
    })
}

fn hooks_dir(tag: &str) -> PathBuf {
    let d = vm_dir(&format!("hooks-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn read_json(p: &Path) -> Value {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_slice(&b).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn order(d: &Path) -> Vec<String> {
    std::fs::read_to_string(d.join("order"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn bundle_create(h: &Husk, b: &TestBundle, id: &str) -> Output {
    h.run(&["create", "--bundle", b.dir.to_str().unwrap(), id])
}

/// No husk-vmm of this test's state root is left on the host.
fn assert_no_vmm_left(h: &Husk) {
    let root = h.root.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&root) && !c.contains(" state "))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left running: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_hook_runs_on_the_host_in_order_with_the_state() {
    let h = Husk::new("hooks-all");
    let d = hooks_dir("all");
    let mut b = TestBundle::busybox("hooks-all", &["sleep", "1000"]);
    let root = h.root.join("hk1");
    b.config["annotations"] = json!({"org.example.hooks": "yes"});
    b.config["hooks"] = json!({
        "prestart": [recorder(&d, "prestart", "")],
        "createRuntime": [recorder(&d, "createRuntime", "")],
        "createContainer": [recorder(&d, "createContainer", "")],
        "startContainer": [recorder(&d, "startContainer", "")],
        "poststart": [recorder(&d, "poststart", "")],
        // Runs once the container's state is gone.
        "poststop": [recorder(&d, "poststop", &format!(
            "test -e {} && echo state-still-there >> {}/order; true",
            root.display(), d.display()
        ))],
    });
    b.write();

    let o = bundle_create(&h, &b, "hk1");
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(order(&d), ["prestart", "createRuntime", "createContainer"]);
    let st: Value = serde_json::from_slice(&h.run(&["state", "hk1"]).stdout).unwrap();
    let pid = st["pid"].as_i64().unwrap();
    assert!(pid > 0);
    for k in ["prestart", "createRuntime", "createContainer"] {
        let s = read_json(&d.join(format!("{k}.json")));
        assert_eq!(s["id"], "hk1", "{k}: {s}");
        assert_eq!(s["status"], "creating", "{k}: {s}");
        assert_eq!(s["pid"], pid, "{k}: {s}");
        assert_eq!(s["bundle"], b.dir.to_str().unwrap(), "{k}: {s}");
        assert_eq!(s["annotations"]["org.example.hooks"], "yes", "{k}: {s}");
        assert!(s["ociVersion"].is_string(), "{k}: {s}");
    }

    let o = h.run(&["start", "hk1"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(
        order(&d)[3..],
        ["startContainer".to_string(), "poststart".to_string()]
    );
    assert_eq!(
        read_json(&d.join("startContainer.json"))["status"],
        "created"
    );
    let s = read_json(&d.join("poststart.json"));
    assert_eq!(
        (s["status"].clone(), s["pid"].clone()),
        (json!("running"), json!(pid))
    );

    assert!(h.run(&["kill", "hk1", "KILL"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while serde_json::from_slice::<Value>(&h.run(&["state", "hk1"]).stdout).unwrap()["status"]
        != "stopped"
    {
        assert!(Instant::now() < deadline, "hk1 never stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(order(&d).len(), 5, "no hook runs on kill: {:?}", order(&d));
    let o = h.run(&["delete", "hk1"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(order(&d)[5..], ["poststop".to_string()]);
    let s = read_json(&d.join("poststop.json"));
    assert_eq!(s["status"], "stopped", "{s}");
    assert!(s.get("pid").is_none(), "{s}");
    assert_no_vmm_left(&h);
}

#[test]
fn a_failing_create_hook_undoes_the_create() {
    let h = Husk::new("hooks-fail");
    let d = hooks_dir("fail");
    let mut b = TestBundle::busybox("hooks-fail", &["sleep", "1000"]);
    b.config["hooks"] = json!({
        "createRuntime": [
            recorder(&d, "createRuntime", ""),
            recorder(&d, "createRuntime2", "echo no-gpu-here >&2; exit 7"),
        ],
        "createContainer": [recorder(&d, "createContainer", "")],
        "poststop": [recorder(&d, "poststop", "")],
    });
    b.write();
    let o = bundle_create(&h, &b, "hkf");
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    let e = err(&o);
    assert!(
        e.contains("error running createRuntime hook #1: error running hook: exit status: 7")
            && e.contains("stderr: no-gpu-here"),
        "{e}"
    );
    // The run stopped at the failure; the container and its VM are gone, and
    // it was torn down as a container is (poststop ran).
    assert_eq!(order(&d), ["createRuntime", "createRuntime2", "poststop"]);
    assert!(!h.root.join("hkf").exists());
    let o = h.run(&["state", "hkf"]);
    assert!(!o.status.success());
    assert_no_vmm_left(&h);
}

#[test]
fn a_hook_past_its_timeout_is_killed_and_fails_the_create() {
    let h = Husk::new("hooks-timeout");
    let d = hooks_dir("timeout");
    let mut b = TestBundle::busybox("hooks-timeout", &["sleep", "1000"]);
    let mut hook = recorder(&d, "createContainer", "sleep 600");
    hook["timeout"] = json!(2);
    b.config["hooks"] = json!({ "createContainer": [hook] });
    b.write();
    let t = Instant::now();
    let o = bundle_create(&h, &b, "hkt");
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(
        err(&o).contains(
            "error running createContainer hook #0: hook ran past specified timeout of 2.0s"
        ),
        "{}",
        err(&o)
    );
    // Well under the hook's own 600 s (the VM boot is most of it).
    assert!(t.elapsed() < Duration::from_secs(150), "{:?}", t.elapsed());
    assert!(!h.root.join("hkt").exists());
    assert_no_vmm_left(&h);
}

#[test]
fn poststart_and_poststop_failures_are_warnings() {
    let h = Husk::new("hooks-warn");
    let d = hooks_dir("warn");
    let mut b = TestBundle::busybox("hooks-warn", &["sleep", "1000"]);
    b.config["hooks"] = json!({
        "poststart": [recorder(&d, "poststart", "exit 2"), recorder(&d, "poststart2", "")],
        "poststop": [recorder(&d, "poststop", "exit 3")],
    });
    b.write();
    let o = h.run(&[
        "run",
        "--detach",
        "--bundle",
        b.dir.to_str().unwrap(),
        "hkw",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        err(&o).contains("warning: error running poststart hook #0"),
        "{}",
        err(&o)
    );
    assert_eq!(order(&d), ["poststart", "poststart2"]);
    let st: Value = serde_json::from_slice(&h.run(&["state", "hkw"]).stdout).unwrap();
    assert_eq!(st["status"], "running");
    let o = h.run(&["delete", "--force", "hkw"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        err(&o).contains("warning: error running poststop hook #0"),
        "{}",
        err(&o)
    );
    assert!(!h.root.join("hkw").exists());
    assert_no_vmm_left(&h);
}

#[test]
fn invalid_hooks_are_refused_before_anything_runs() {
    let h = Husk::new("hooks-bad");
    let d = hooks_dir("bad");
    let mut b = TestBundle::busybox("hooks-bad", &["true"]);
    b.config["hooks"] = json!({
        "prestart": [recorder(&d, "prestart", "")],
        "poststop": [{"path": "relative/hook"}],
    });
    b.write();
    let o = bundle_create(&h, &b, "hkb");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("hooks.poststop[0]: path \"relative/hook\" is not absolute"),
        "{}",
        err(&o)
    );
    b.config["hooks"] = json!({ "prestart": [{"path": "/bin/true", "timeout": 0}] });
    b.write();
    let o = bundle_create(&h, &b, "hkb");
    assert!(
        err(&o).contains("timeout 0 must be greater than zero"),
        "{}",
        err(&o)
    );
    assert!(order(&d).is_empty());
    assert!(!h.root.join("hkb").exists());
}
