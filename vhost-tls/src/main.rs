//! `vhost-tls`: the command line of the virtio-tls vhost-user backend.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tls_engine::Policy;
use vhost_tls::control::{self, Control, Request};
use vhost_tls::sandbox::{self, SandboxMode, SandboxPlan};
use vhost_tls::{DeviceShape, Server};

/// TLS as a hypervisor service: the vhost-user backend of virtio-tls.
#[derive(Parser)]
#[command(name = "vhost-tls", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one VM on a vhost-user socket until its front end disconnects.
    Serve {
        /// vhost-user Unix socket to listen on (QEMU's chardev path).
        #[arg(long)]
        socket_path: PathBuf,
        /// The VM's policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// Data queue pairs (QEMU's num_vqs is 2 + 2 x this).
        #[arg(long, default_value_t = 1)]
        queue_pairs: u16,
        /// Microseconds the worker keeps polling sockets and queues after
        /// each wake-up before it sleeps: lower round-trip latency for more
        /// CPU (docs/performance.md). 0, the default, never polls.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1000))]
        busy_poll_us: u64,
        /// Unix socket for `vhost-tls ctl` (sockets, policy, reload, metrics).
        #[arg(long)]
        control_socket: Option<PathBuf>,
        /// Append one JSON line per session, when it ends, to this file.
        #[arg(long)]
        audit_log: Option<PathBuf>,
        /// Self-confinement once everything is open: privilege drop,
        /// Landlock, seccomp (docs/operator.md, "The sandbox").
        #[arg(long, value_enum, default_value_t = SandboxMode::On)]
        sandbox: SandboxMode,
        /// The user to switch to when started as root (default: nobody).
        #[arg(long)]
        user: Option<String>,
    },
    /// Talk to a running `serve` through its control socket.
    Ctl {
        /// The `--control-socket` of the `serve` to ask.
        #[arg(long)]
        control_socket: PathBuf,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// Policy file tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// List sockets and sessions: peer, name, TLS version, cipher, bytes.
    Sockets,
    /// Show the effective policy (after includes and defaults).
    Policy,
    /// Reload the policy file (or FILE) for new sessions; open ones keep theirs.
    Reload {
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Print metrics in the Prometheus text format.
    Metrics {
        /// Add the label vm="NAME" to every series, so files of several
        /// VMs can be collected side by side.
        #[arg(long)]
        vm: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file; names the line of the first problem.
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Policy { command: PolicyCommand::Check { file } } => match Policy::load(&file) {
            Ok(_) => {
                println!("{}: OK", file.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error}");
                ExitCode::FAILURE
            }
        },
        Command::Ctl { control_socket, command } => {
            let vm_label = match &command {
                CtlCommand::Metrics { vm } => vm.clone(),
                _ => None,
            };
            let request = match command {
                CtlCommand::Sockets => Request::Sockets,
                CtlCommand::Policy => Request::Policy,
                // Relative to where ctl runs, not where serve does.
                CtlCommand::Reload { policy } => Request::Reload { policy: policy.map(|p| std::path::absolute(&p).unwrap_or(p)) },
                CtlCommand::Metrics { .. } => Request::Metrics,
            };
            match control::request(&control_socket, &request) {
                Ok(response) if response.ok => {
                    let output = match &vm_label {
                        Some(vm) => vhost_tls::telemetry::with_label(&response.output, "vm", vm),
                        None => response.output,
                    };
                    print!("{}", with_newline(output));
                    ExitCode::SUCCESS
                }
                Ok(response) => {
                    eprint!("vhost-tls: {}", with_newline(response.output));
                    ExitCode::FAILURE
                }
                Err(error) => {
                    eprintln!("vhost-tls: {}: {error}", control_socket.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve { socket_path, policy: policy_path, queue_pairs, busy_poll_us, control_socket, audit_log, sandbox: mode, user } => {
            let policy = match Policy::load(&policy_path) {
                Ok(policy) => Arc::new(policy),
                Err(error) => {
                    eprintln!("vhost-tls: {error}");
                    return ExitCode::FAILURE;
                }
            };
            raise_fd_limit();
            let mut socket_dirs = vec![sandbox::parent_dir(&socket_path)];
            socket_dirs.extend(control_socket.as_deref().map(sandbox::parent_dir));
            let sandbox = SandboxPlan {
                mode,
                user,
                policy_dirs: sandbox::policy_dirs(&policy_path, &policy),
                socket_dirs,
                keep_net_bind_service: sandbox::maps_privileged_ports(&policy),
            };
            let options = ServeOptions { policy_path, control_socket, audit_log, sandbox };
            let shape = DeviceShape { queue_pairs, busy_poll: std::time::Duration::from_micros(busy_poll_us) };
            match serve(socket_path, policy, shape, options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("vhost-tls: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn with_newline(mut text: String) -> String {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// The operator's side of `serve`.
struct ServeOptions {
    policy_path: PathBuf,
    control_socket: Option<PathBuf>,
    audit_log: Option<PathBuf>,
    sandbox: SandboxPlan,
}

fn serve(socket_path: PathBuf, policy: Arc<Policy>, shape: DeviceShape, options: ServeOptions) -> Result<(), Box<dyn std::error::Error>> {
    // Opened before anything listens, so a path that cannot be written
    // stops the backend before a VM depends on it.
    let audit_log = match &options.audit_log {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open the audit log {}: {e}", path.display()))?,
        ),
        None => None,
    };
    // Before any socket exists, so neither a front end nor an operator can
    // see a backend that a signal would kill uncleanly (SIGHUP's default
    // action is to terminate).
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let control_listener = match &options.control_socket {
        Some(path) => Some(
            control::bind(path).map_err(|e| format!("cannot listen on the control socket {}: {e}", path.display()))?,
        ),
        None => None,
    };
    // Confined once every socket is bound and before any thread starts.
    let confine = || sandbox::confine(&options.sandbox).map(|_| ());
    let server = match Server::start_confined(&socket_path, policy, shape.clone(), confine) {
        Ok(server) => Arc::new(server),
        Err(error) => {
            if let Some(path) = &options.control_socket {
                let _ = std::fs::remove_file(path);
            }
            return Err(error.into());
        }
    };
    if let Some(log) = audit_log {
        server.set_audit_log(Box::new(log));
    }
    let control = Arc::new(Control::new(server.clone(), options.policy_path));
    if let (Some(listener), Some(path)) = (control_listener, &options.control_socket) {
        control::serve(listener, control.clone())?;
        tracing::info!(control_socket = %path.display(), "control socket ready");
    }
    tracing::info!(socket = %socket_path.display(), queue_pairs = shape.queue_pairs, busy_poll_us = shape.busy_poll.as_micros() as u64, "waiting for the front end");
    let on_signal = server.clone();
    let cleanup_path = socket_path.clone();
    let control_path = options.control_socket.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal == SIGHUP {
                // The outcome is logged either way; a refused policy
                // leaves the one in force.
                if let Ok(message) = control.reload(None) {
                    tracing::info!("SIGHUP: {message}");
                }
                continue;
            }
            tracing::info!(signal, "stopping");
            if on_signal.connected() {
                on_signal.stop();
            } else {
                // Still waiting for a front end: nothing to wind down.
                let _ = std::fs::remove_file(&cleanup_path);
                if let Some(path) = &control_path {
                    let _ = std::fs::remove_file(path);
                }
                std::process::exit(0);
            }
            break;
        }
    });
    let result = server.wait();
    let _ = std::fs::remove_file(&socket_path);
    if let Some(path) = &options.control_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(result?)
}

/// Each guest socket is a host socket: lift the soft descriptor limit to
/// the hard one so `max_sockets` is not cut short by a default of 1024.
fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
