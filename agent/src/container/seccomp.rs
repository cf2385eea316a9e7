//! OCI seccomp profile → BPF, compiled by seccompiler.
//!
//! seccompiler builds filters with one match action and one mismatch action,
//! while an OCI profile gives every syscall rule its own action. The profile is
//! therefore compiled into a stack of filters the kernel evaluates together
//! (the most severe result of all filters wins, see seccomp(2)):
//!
//! * a *default* filter: every syscall some rule names (with its argument
//!   conditions) → ALLOW, anything else → the default action;
//! * one filter per other action A: the rules whose action is A → A, anything
//!   else → ALLOW.
//!
//! A syscall matching a rule of action A gets ALLOW from the default filter
//! and A from its own, so A; a syscall matching no rule gets the default
//! action. Like runc: rules whose action equals the default are dropped,
//! unknown syscall names are ignored, and several conditions on the same
//! argument make one rule per condition (OR) instead of one rule (AND).
//!
//! Only the native architecture is filtered: seccompiler's filters kill a
//! process making a syscall through another ABI (e.g. 32-bit x86).

use std::collections::{BTreeMap, HashSet};

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};
use seccompiler::{BpfProgram, TargetArch};
use serde_json::{json, Value};

#[cfg(target_arch = "x86_64")]
const NATIVE: (TargetArch, Arch) = (TargetArch::x86_64, Arch::ScmpArchX86_64);
#[cfg(target_arch = "aarch64")]
const NATIVE: (TargetArch, Arch) = (TargetArch::aarch64, Arch::ScmpArchAarch64);

/// The filters to install, in order, and the seccomp(2) flags for each.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub programs: Vec<BpfProgram>,
    pub flags: libc::c_ulong,
    /// Syscall names of the profile this architecture does not have.
    #[cfg_attr(not(test), allow(dead_code))]
    pub ignored: Vec<String>,
}

/// What a syscall (with conditions) maps to, in seccompiler's JSON form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Allow,
    Errno(u32),
    KillThread,
    KillProcess,
    Log,
    Trace(u32),
    Trap,
}

impl Action {
    fn json(&self) -> Value {
        match self {
            Action::Allow => json!("allow"),
            Action::Errno(e) => json!({ "errno": e }),
            Action::KillThread => json!("kill_thread"),
            Action::KillProcess => json!("kill_process"),
            Action::Log => json!("log"),
            Action::Trace(e) => json!({ "trace": e }),
            Action::Trap => json!("trap"),
        }
    }
}

fn action(a: LinuxSeccompAction, errno: Option<u32>, what: &str) -> Result<Action, String> {
    let errno = errno.unwrap_or(libc::EPERM as u32);
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            Action::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => Action::KillProcess,
        LinuxSeccompAction::ScmpActTrap => Action::Trap,
        LinuxSeccompAction::ScmpActErrno => Action::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => Action::Trace(errno),
        LinuxSeccompAction::ScmpActLog => Action::Log,
        LinuxSeccompAction::ScmpActAllow => Action::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(format!(
                "{what}: SCMP_ACT_NOTIFY is not supported (no seccomp agent in husk)"
            ))
        }
    })
}

/// A syscall's rules within one filter: unconditional, or any of several
/// condition lists (each list ANDed).
#[derive(Debug, Clone, PartialEq)]
enum Rules {
    Always,
    AnyOf(Vec<Vec<Value>>),
}

impl Rules {
    fn add(&mut self, conds: Option<Vec<Vec<Value>>>) {
        match (self, conds) {
            (Rules::Always, _) => {}
            (me, None) => *me = Rules::Always,
            (Rules::AnyOf(v), Some(c)) => v.extend(c),
        }
    }
}

fn condition(arg: &LinuxSeccompArg, what: &str) -> Result<Value, String> {
    if arg.index() > 5 {
        return Err(format!(
            "{what}: argument index {} out of range (0-5)",
            arg.index()
        ));
    }
    let (op, val) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (json!("ne"), arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (json!("lt"), arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (json!("le"), arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (json!("eq"), arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (json!("ge"), arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (json!("gt"), arg.value()),
        // libseccomp: (arg & value) == valueTwo
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            json!({ "masked_eq": arg.value() }),
            arg.value_two().unwrap_or(0),
        ),
    };
    Ok(json!({ "index": arg.index(), "type": "qword", "op": op, "val": val }))
}

/// Condition lists for one syscall entry: `None` = unconditional.
fn conditions(
    args: Option<&Vec<LinuxSeccompArg>>,
    what: &str,
) -> Result<Option<Vec<Vec<Value>>>, String> {
    let Some(args) = args.filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let conds = args
        .iter()
        .map(|a| condition(a, what))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = HashSet::new();
    let same_index = args.iter().any(|a| !seen.insert(a.index()));
    Ok(Some(if same_index {
        // libseccomp cannot AND two conditions on one argument; runc adds
        // one rule per condition instead.
        conds.into_iter().map(|c| vec![c]).collect()
    } else {
        vec![conds]
    }))
}

fn syscall_known(arch: TargetArch, name: &str) -> bool {
    let probe = json!({ "p": {
        "mismatch_action": "allow",
        "match_action": "trap",
        "filter": [{ "syscall": name }],
    }});
    seccompiler::compile_from_json(probe.to_string().as_bytes(), arch).is_ok()
}

fn filter_json(rules: &BTreeMap<String, Rules>, matched: &Action, mismatched: &Action) -> Value {
    let mut filter = Vec::new();
    for (name, r) in rules {
        match r {
            Rules::Always => filter.push(json!({ "syscall": name })),
            Rules::AnyOf(lists) => {
                for conds in lists {
                    filter.push(json!({ "syscall": name, "args": conds }));
                }
            }
        }
    }
    json!({
        "mismatch_action": mismatched.json(),
        "match_action": matched.json(),
        "filter": filter,
    })
}

/// Compiles `linux.seccomp`. Errors name the offending field.
pub fn compile(profile: &LinuxSeccomp) -> Result<Compiled, String> {
    let (arch, native) = NATIVE;
    if let Some(archs) = profile.architectures() {
        if !archs.is_empty()
            && !archs
                .iter()
                .any(|a| *a == native || *a == Arch::ScmpArchNative)
        {
            return Err(format!(
                "linux.seccomp.architectures does not include the guest's architecture {native}"
            ));
        }
    }
    if profile.listener_path().is_some() {
        return Err("linux.seccomp.listenerPath: seccomp agents are not supported".into());
    }
    let mut flags: libc::c_ulong = 0;
    for f in profile.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            // The filter is installed by a single-threaded process.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 0,
        };
    }
    let default = action(
        profile.default_action(),
        profile.default_errno_ret(),
        "linux.seccomp.defaultAction",
    )?;

    let mut by_action: BTreeMap<Action, BTreeMap<String, Rules>> = BTreeMap::new();
    let mut all: BTreeMap<String, Rules> = BTreeMap::new();
    let mut known: HashSet<String> = HashSet::new();
    let mut ignored: Vec<String> = Vec::new();
    for (i, sc) in profile.syscalls().iter().flatten().enumerate() {
        let what = format!("linux.seccomp.syscalls[{i}]");
        let act = action(sc.action(), sc.errno_ret(), &what)?;
        let conds = conditions(sc.args().as_ref(), &what)?;
        if act == default {
            continue;
        }
        for name in sc.names() {
            if !known.contains(name) {
                if ignored.contains(name) {
                    continue;
                }
                if !syscall_known(arch, name) {
                    ignored.push(name.clone());
                    continue;
                }
                known.insert(name.clone());
            }
            let fresh = || match &conds {
                None => Rules::Always,
                Some(c) => Rules::AnyOf(c.clone()),
            };
            by_action
                .entry(act.clone())
                .or_default()
                .entry(name.clone())
                .and_modify(|r| r.add(conds.clone()))
                .or_insert_with(fresh);
            all.entry(name.clone())
                .and_modify(|r| r.add(conds.clone()))
                .or_insert_with(fresh);
        }
    }

    let mut filters: Vec<(String, Value)> = Vec::new();
    if default != Action::Allow {
        filters.push((
            "0-default".into(),
            filter_json(&all, &Action::Allow, &default),
        ));
    }
    for (n, (act, rules)) in by_action.iter().enumerate() {
        if *act != Action::Allow {
            filters.push((
                format!("{}-action", n + 1),
                filter_json(rules, act, &Action::Allow),
            ));
        }
    }
    let mut programs = Vec::new();
    for (key, filter) in filters {
        let doc = json!({ key.clone(): filter });
        let mut map = seccompiler::compile_from_json(doc.to_string().as_bytes(), arch)
            .map_err(|e| format!("linux.seccomp: {e}"))?;
        let prog = map
            .remove(&key)
            .ok_or_else(|| "linux.seccomp: compiler returned no program".to_string())?;
        programs.push(prog);
    }
    Ok(Compiled {
        programs,
        flags,
        ignored,
    })
}

#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const seccompiler::sock_filter,
}

/// Installs the filters on the calling thread. Needs no_new_privs or
/// CAP_SYS_ADMIN; sets neither (runc's semantics, unlike seccompiler's
/// `apply_filter`, which always sets no_new_privs).
pub fn install(c: &Compiled) -> Result<(), String> {
    for prog in &c.programs {
        let fprog = SockFprog {
            len: prog.len() as libc::c_ushort,
            filter: prog.as_ptr(),
        };
        // SAFETY: the kernel copies the program; `prog` outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                c.flags,
                &fprog as *const SockFprog,
            )
        };
        if rc != 0 {
            return Err(format!(
                "install seccomp filter: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(v: Value) -> LinuxSeccomp {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn allowlist_with_unknown_names() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                { "names": ["read", "write", "no_such_syscall", "arm_fadvise64_64"],
                  "action": "SCMP_ACT_ALLOW" },
                { "names": ["exit_group"], "action": "SCMP_ACT_ALLOW" }
            ]
        }));
        let c = compile(&p).unwrap();
        assert_eq!(c.ignored, vec!["no_such_syscall", "arm_fadvise64_64"]);
        // only the default filter: every rule is ALLOW
        assert_eq!(c.programs.len(), 1);
        assert_eq!(c.flags, 0);
    }

    #[test]
    fn per_action_filters() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
                { "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO" },
                { "names": ["reboot"], "action": "SCMP_ACT_KILL_PROCESS" },
                { "names": ["getpid"], "action": "SCMP_ACT_ALLOW" }
            ]
        }));
        let c = compile(&p).unwrap();
        // default is ALLOW: no default filter; one filter for ERRNO, one for KILL_PROCESS
        assert_eq!(c.programs.len(), 2);
        assert_eq!(c.flags, libc::SECCOMP_FILTER_FLAG_LOG);
        assert!(c.ignored.is_empty());
    }

    #[test]
    fn argument_conditions() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                { "names": ["personality"], "action": "SCMP_ACT_ALLOW",
                  "args": [ { "index": 0, "value": 0, "op": "SCMP_CMP_EQ" } ] },
                { "names": ["personality"], "action": "SCMP_ACT_ALLOW",
                  "args": [ { "index": 0, "value": 8, "op": "SCMP_CMP_EQ" } ] },
                { "names": ["clone"], "action": "SCMP_ACT_ALLOW",
                  "args": [ { "index": 0, "value": 2114060288, "valueTwo": 0,
                              "op": "SCMP_CMP_MASKED_EQ" } ] },
                { "names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97,
                  "args": [ { "index": 0, "value": 16, "op": "SCMP_CMP_EQ" },
                            { "index": 2, "value": 9, "op": "SCMP_CMP_EQ" } ] },
                { "names": ["kill"], "action": "SCMP_ACT_ALLOW",
                  "args": [ { "index": 1, "value": 1, "op": "SCMP_CMP_GE" },
                            { "index": 1, "value": 31, "op": "SCMP_CMP_LE" } ] }
            ]
        }));
        let c = compile(&p).unwrap();
        assert_eq!(c.programs.len(), 2); // default filter + ERRNO(97) filter
    }

    #[test]
    fn condition_translation() {
        let arg: LinuxSeccompArg = serde_json::from_value(
            json!({ "index": 1, "value": 255, "valueTwo": 7, "op": "SCMP_CMP_MASKED_EQ" }),
        )
        .unwrap();
        assert_eq!(
            condition(&arg, "x").unwrap(),
            json!({ "index": 1, "type": "qword", "op": { "masked_eq": 255 }, "val": 7 })
        );
        let args: Vec<LinuxSeccompArg> = serde_json::from_value(json!([
            { "index": 1, "value": 1, "op": "SCMP_CMP_GE" },
            { "index": 1, "value": 31, "op": "SCMP_CMP_LE" },
        ]))
        .unwrap();
        // same index: OR of single conditions
        let c = conditions(Some(&args), "x").unwrap().unwrap();
        assert_eq!(c.len(), 2);
        let args: Vec<LinuxSeccompArg> = serde_json::from_value(json!([
            { "index": 0, "value": 1, "op": "SCMP_CMP_NE" },
            { "index": 1, "value": 31, "op": "SCMP_CMP_LT" },
        ]))
        .unwrap();
        let c = conditions(Some(&args), "x").unwrap().unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].len(), 2);
        let bad: LinuxSeccompArg =
            serde_json::from_value(json!({ "index": 6, "value": 0, "op": "SCMP_CMP_EQ" })).unwrap();
        assert!(condition(&bad, "linux.seccomp.syscalls[3]")
            .unwrap_err()
            .contains("linux.seccomp.syscalls[3]: argument index 6"));
    }

    #[test]
    fn unconditional_rule_wins_over_conditional() {
        let mut r = Rules::AnyOf(vec![vec![json!(1)]]);
        r.add(None);
        assert_eq!(r, Rules::Always);
        r.add(Some(vec![vec![json!(2)]]));
        assert_eq!(r, Rules::Always);
    }

    #[test]
    fn errors() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [ { "names": ["read"], "action": "SCMP_ACT_NOTIFY" } ]
        }));
        assert!(compile(&p)
            .unwrap_err()
            .contains("linux.seccomp.syscalls[0]: SCMP_ACT_NOTIFY is not supported"));
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_AARCH64"]
        }));
        assert!(compile(&p)
            .unwrap_err()
            .contains("linux.seccomp.architectures does not include"));
    }

    #[test]
    fn empty_allowlist_and_noop() {
        // default ERRNO and no rule: a filter that denies everything
        let p = profile(json!({ "defaultAction": "SCMP_ACT_ERRNO" }));
        assert_eq!(compile(&p).unwrap().programs.len(), 1);
        // default ALLOW and no rule: nothing to install
        let p = profile(json!({ "defaultAction": "SCMP_ACT_ALLOW" }));
        assert!(compile(&p).unwrap().programs.is_empty());
        // rule equal to the default is dropped
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [ { "names": ["read"], "action": "SCMP_ACT_ERRNO" } ]
        }));
        assert_eq!(compile(&p).unwrap().programs.len(), 1);
    }
}
