//! `vhost-tls`: the command line of the virtio-tls vhost-user backend.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tls_engine::Policy;
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
    },
    /// Policy file tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
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
        Command::Serve { socket_path, policy, queue_pairs } => {
            let policy = match Policy::load(&policy) {
                Ok(policy) => Arc::new(policy),
                Err(error) => {
                    eprintln!("vhost-tls: {error}");
                    return ExitCode::FAILURE;
                }
            };
            raise_fd_limit();
            match serve(socket_path, policy, queue_pairs) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("vhost-tls: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(socket_path: PathBuf, policy: Arc<Policy>, queue_pairs: u16) -> Result<(), Box<dyn std::error::Error>> {
    // Before the socket exists, so a front end can never see a backend
    // that a signal would kill uncleanly.
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let server = Arc::new(Server::start(&socket_path, policy, DeviceShape { queue_pairs })?);
    tracing::info!(socket = %socket_path.display(), queue_pairs, "waiting for the front end");
    let on_signal = server.clone();
    let cleanup_path = socket_path.clone();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            tracing::info!(signal, "stopping");
            if on_signal.connected() {
                on_signal.stop();
            } else {
                // Still waiting for a front end: nothing to wind down.
                let _ = std::fs::remove_file(&cleanup_path);
                std::process::exit(0);
            }
        }
    });
    let result = server.wait();
    let _ = std::fs::remove_file(&socket_path);
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
