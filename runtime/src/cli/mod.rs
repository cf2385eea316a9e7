//! Command-line surface, after runc: global flags, then one command.

mod boot;
mod check;
mod exec;
mod lifecycle;
mod misc;
mod ops;
mod sync;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "husk",
    version,
    about = "OCI runtime that runs each container in its own KVM microVM"
)]
pub struct Cli {
    /// Directory for container state.
    #[arg(long, global = true, default_value = "/run/husk")]
    pub root: PathBuf,
    /// Also write errors (and with --debug, progress) to this file.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[arg(long, global = true)]
    pub debug: bool,
    /// husk's own configuration file (default /etc/husk/config.toml, or $HUSK_CONFIG).
    /// Engines that clear the environment pass it as a runtime flag
    /// (`podman --runtime-flag config=FILE`).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Accepted for compatibility: cgroups are managed inside the guest.
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Create a container (its init waits for `start`).
    Create(lifecycle::CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Output the state of a container.
    State { id: String },
    /// Send a signal to the container's init (default SIGTERM).
    Kill {
        /// Send the signal to all processes in the container.
        #[arg(short, long)]
        all: bool,
        id: String,
        signal: Option<String>,
    },
    /// Delete a container and everything it left on the host.
    Delete {
        /// Kill a running container first.
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create and start a container; without --detach, wait for it and delete it.
    Run(lifecycle::RunArgs),
    /// Run a new process inside a running container.
    Exec(exec::ExecArgs),
    /// List the processes running inside a container (guest pids).
    Ps {
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        id: String,
        /// Accepted for compatibility (ps(1) options are not supported).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        ps_args: Vec<String>,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Print container events: resource stats every interval, and OOM kills.
    Events {
        /// Print the stats once and exit.
        #[arg(long)]
        stats: bool,
        /// Interval between stats events.
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Change a container's resource limits (applied to its cgroup in the guest).
    Update(ops::UpdateArgs),
    /// List containers.
    #[command(alias = "ps-all")]
    List {
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// Display only container ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a template config.json into the bundle directory.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        #[arg(long)]
        rootless: bool,
    },
    /// Show what this runtime supports (JSON).
    Features,
    /// Boot a bare microVM, print the agent's hello and timings, shut it down.
    Boot(boot::BootArgs),
    /// Check whether this host can run husk, and say how to fix what it lacks.
    Check(check::CheckArgs),
    #[command(name = "__monitor", hide = true)]
    Monitor { id: String },
    #[command(name = "__exec-monitor", hide = true)]
    ExecMonitor { id: String, exec_id: String },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ListFormat {
    Table,
    Json,
}

/// The container id (and exec id) a command names.
fn ids(cmd: &Cmd) -> Vec<&str> {
    match cmd {
        Cmd::Create(a) => vec![&a.id],
        Cmd::Run(a) => vec![&a.create.id],
        Cmd::Start { id }
        | Cmd::State { id }
        | Cmd::Kill { id, .. }
        | Cmd::Delete { id, .. }
        | Cmd::Ps { id, .. }
        | Cmd::Pause { id }
        | Cmd::Resume { id }
        | Cmd::Events { id, .. }
        | Cmd::Monitor { id } => vec![id],
        Cmd::Exec(a) => vec![&a.id],
        Cmd::Update(a) => vec![&a.id],
        Cmd::ExecMonitor { id, exec_id } => vec![id, exec_id],
        Cmd::List { .. } | Cmd::Spec { .. } | Cmd::Features | Cmd::Boot(_) | Cmd::Check(_) => {
            vec![]
        }
    }
}

/// Marks an `exec` that failed before its process ran: runc says
/// "exec failed: ..." and exits 255 (any other code is the process's own).
#[derive(Debug)]
pub struct ExecFailed;

impl std::fmt::Display for ExecFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("exec failed")
    }
}

/// runc's exit code for an exec that never ran.
pub const EXEC_FAILED_CODE: u8 = 255;

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let is_exec = matches!(cli.command, Cmd::Exec(_));
    dispatch_inner(cli).map_err(|e| if is_exec { e.context(ExecFailed) } else { e })
}

fn dispatch_inner(cli: Cli) -> anyhow::Result<ExitCode> {
    // Every id names a directory under --root: refuse bad ones first, as
    // runc does in every command (`Store::dir` refuses them too).
    for id in ids(&cli.command) {
        husk::container::validate_id(id)?;
    }
    if let Some(c) = &cli.config {
        // Single-threaded here; the monitors we start inherit it.
        std::env::set_var("HUSK_CONFIG", c);
    }
    let store = husk::container::Store::new(&cli.root);
    match cli.command {
        Cmd::Create(a) => lifecycle::create(&store, &a).map(|_| ExitCode::SUCCESS),
        Cmd::Start { id } => lifecycle::start(&store, &id).map(|_| ExitCode::SUCCESS),
        Cmd::State { id } => lifecycle::state(&store, &id).map(|_| ExitCode::SUCCESS),
        Cmd::Kill { all, id, signal } => {
            lifecycle::kill(&store, &id, signal.as_deref(), all).map(|_| ExitCode::SUCCESS)
        }
        Cmd::Delete { force, id } => {
            lifecycle::delete(&store, &id, force).map(|_| ExitCode::SUCCESS)
        }
        Cmd::Run(a) => lifecycle::run(&store, &a),
        Cmd::List { format, quiet } => misc::list(&store, format, quiet).map(|_| ExitCode::SUCCESS),
        Cmd::Spec { bundle, rootless } => misc::spec(&bundle, rootless).map(|_| ExitCode::SUCCESS),
        Cmd::Features => misc::features().map(|_| ExitCode::SUCCESS),
        Cmd::Boot(a) => boot::boot(a).map(|_| ExitCode::SUCCESS),
        Cmd::Check(a) => check::check(&a),
        Cmd::Exec(a) => exec::exec(&store, &cli.root, &a),
        Cmd::Ps { format, id, .. } => ops::ps(&store, &id, format).map(|_| ExitCode::SUCCESS),
        Cmd::Pause { id } => ops::pause(&store, &id).map(|_| ExitCode::SUCCESS),
        Cmd::Resume { id } => ops::resume(&store, &id).map(|_| ExitCode::SUCCESS),
        Cmd::Events {
            stats,
            interval,
            id,
        } => ops::events(&store, &id, &interval, stats).map(|_| ExitCode::SUCCESS),
        Cmd::Update(a) => ops::update(&store, &a).map(|_| ExitCode::SUCCESS),
        Cmd::ExecMonitor { id, exec_id } => {
            let sync = husk::monitor::sync_fd_from_env()
                .ok_or_else(|| anyhow::anyhow!("__exec-monitor is internal to husk exec"))?;
            husk::exec::run_monitor(&store, &id, &exec_id, sync)
        }
        Cmd::Monitor { id } => {
            let sync = husk::monitor::sync_fd_from_env()
                .ok_or_else(|| anyhow::anyhow!("__monitor is internal to husk create"))?;
            husk::monitor::run(&store, &id, sync)
        }
    }
}

/// Where errors go: stderr always, and the --log file in runc's formats
/// (conmon and containerd read the last error line from it).
pub struct Log {
    file: Option<PathBuf>,
    format: LogFormat,
}

impl Log {
    pub fn new(cli: &Cli) -> Log {
        Log {
            file: cli.log.clone(),
            format: cli.log_format,
        }
    }

    pub fn error(&self, msg: &str) {
        eprintln!("husk: {msg}");
        let Some(path) = &self.file else { return };
        let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        else {
            return;
        };
        let time = husk::container::State::now_rfc3339();
        let line = match self.format {
            LogFormat::Json => {
                serde_json::json!({"level": "error", "msg": msg, "time": time}).to_string()
            }
            LogFormat::Text => format!("time={time:?} level=error msg={msg:?}"),
        };
        let _ = writeln!(f, "{line}");
    }
}
