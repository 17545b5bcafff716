//! `vhost-tls`: the command line of the virtio-tls vhost-user backend.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tls_engine::Policy;
use vhost_tls::control::{self, Control, Request};
use vhost_tls::sandbox::{self, SandboxMode, SandboxPlan};
use vhost_tls::{DeviceShape, ListenOn, Server};

/// TLS as a hypervisor service: the vhost-user backend of virtio-tls.
///
/// As QEMU's vhost-user backend programs do, the bare program serves too:
/// `vhost-tls --socket-path PATH --policy FILE` (or `--fd N`) is
/// `vhost-tls serve ...`.
#[derive(Parser)]
#[command(name = "vhost-tls", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Print the backend's capabilities as JSON and exit (QEMU's
    /// vhost-user backend convention, docs/interop/vhost-user.json).
    #[arg(long)]
    print_capabilities: bool,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What `serve` (and the bare program) takes.
#[derive(clap::Args)]
#[command(next_help_heading = "Serving (the bare program, as `serve`)")]
struct ServeArgs {
    /// vhost-user Unix socket to listen on (QEMU's chardev path).
    #[arg(long, conflicts_with = "fd")]
    socket_path: Option<PathBuf>,
    /// Give the --socket-path socket this group (a name or a number) and
    /// mode 0660, so that only the VM's QEMU, in that group, can connect
    /// (docs/operator.md, "One VM cannot reach another's backend"). Not run
    /// as root, the backend must be a member of it (SupplementaryGroups=).
    #[arg(long, requires = "socket_path", conflicts_with = "fd")]
    socket_group: Option<String>,
    /// A listening vhost-user Unix socket handed over as this descriptor;
    /// its file, if any, is the caller's to remove. Without this or
    /// --socket-path, the socket systemd passed (LISTEN_FDS/LISTEN_PID, a
    /// .socket unit's) is served.
    #[arg(long)]
    fd: Option<RawFd>,
    /// The VM's policy file (TOML).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Data queue pairs (the same as vhost-user-tls-pci's queue-pairs; 2 + 2 x this virtqueues).
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
    /// Append one JSON line per session, when it ends, to this file
    /// (reopened on SIGHUP, after logrotate renamed it).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// The VM's name, put in every audit record and as the label vm="NAME"
    /// on every metric (the units pass their instance name, %i).
    #[arg(long)]
    vm_name: Option<String>,
    /// Self-confinement once everything is open: privilege drop,
    /// Landlock, seccomp (docs/operator.md, "The sandbox").
    #[arg(long, value_enum, default_value_t = SandboxMode::On)]
    sandbox: SandboxMode,
    /// The user to switch to when started as root (default: nobody).
    #[arg(long)]
    user: Option<String>,
}

impl ServeArgs {
    /// Whether the bare program was asked to serve.
    fn given(&self) -> bool {
        self.socket_path.is_some() || self.fd.is_some() || self.policy.is_some()
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve one VM on a vhost-user socket until its front end disconnects.
    Serve(ServeArgs),
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
    /// Print the QEMU arguments that attach the device to a backend.
    QemuArgs(QemuArgs),
}

/// What `qemu-args` takes.
#[derive(clap::Args)]
struct QemuArgs {
    /// The vhost-user socket the backend listens on.
    #[arg(long)]
    socket: PathBuf,
    /// Data queue pairs: the backend's `serve --queue-pairs`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_QUEUE_PAIRS)))]
    queue_pairs: u16,
    /// The VM's policy, checked first. QEMU's arguments do not depend on
    /// it: the guest reads the policy's limits from the device.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The id of the chardev (and the device's chardev= property).
    #[arg(long, default_value = "vhost-tls0")]
    chardev_id: String,
    /// QEMU connects again this often while the backend is away (a restart);
    /// 0: never.
    #[arg(long, default_value_t = 1000)]
    reconnect_ms: u32,
    /// `named`: `vhost-user-tls-pci`, the device qemu/patches adds;
    /// `generic`: `vhost-user-device-pci` with the virtio id, queue count
    /// and config size spelled out (QEMU with the generic device made
    /// user-creatable).
    #[arg(long, value_enum, default_value_t = DeviceForm::Named)]
    device: DeviceForm,
    /// Also the guest memory, shared with the backend as vhost-user needs
    /// (memfd, share=on; a NUMA node over it): its size, e.g. 2G.
    #[arg(long)]
    memory: Option<String>,
    /// A JSON array of the arguments instead of a shell line (for tools,
    /// such as libvirt's <qemu:arg value=.../>).
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DeviceForm {
    Named,
    Generic,
}

/// QEMU's VIRTIO_QUEUE_MAX is 1024 virtqueues: the control and event
/// queues, then a pair per data queue pair.
const MAX_QUEUE_PAIRS: u16 = (1024 - 2) / 2;

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
    let cli = Cli::parse();
    if cli.print_capabilities {
        // The convention: other options are ignored, nothing is served.
        println!("{}", capabilities());
        return ExitCode::SUCCESS;
    }
    let command = match cli.command {
        Some(command) => command,
        None if cli.serve.given() => Command::Serve(cli.serve),
        None => {
            eprint!("{}", Cli::command().render_help());
            return ExitCode::from(2);
        }
    };
    match command {
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
        Command::Serve(args) => run_serve(args),
        Command::QemuArgs(args) => {
            if let Some(path) = &args.policy {
                if let Err(error) = Policy::load(path) {
                    eprintln!("vhost-tls: {error}");
                    return ExitCode::FAILURE;
                }
            }
            let arguments = qemu_arguments(&args);
            if args.json {
                println!("{}", serde_json::Value::from(arguments));
            } else {
                println!("{}", arguments.iter().map(|a| shell_quoted(a)).collect::<Vec<_>>().join(" "));
            }
            ExitCode::SUCCESS
        }
    }
}

/// The QEMU arguments that attach a virtio-tls device to the backend on
/// `args.socket`.
fn qemu_arguments(args: &QemuArgs) -> Vec<String> {
    let mut arguments = Vec::new();
    if let Some(size) = &args.memory {
        arguments.extend([
            "-object".to_owned(),
            format!("memory-backend-memfd,id=vhost-tls-mem,size={size},share=on"),
            "-numa".to_owned(),
            "node,memdev=vhost-tls-mem".to_owned(),
        ]);
    }
    let id = &args.chardev_id;
    // QEMU's option syntax doubles a comma inside a value.
    let path = args.socket.display().to_string().replace(',', ",,");
    let reconnect = if args.reconnect_ms > 0 { format!(",reconnect-ms={}", args.reconnect_ms) } else { String::new() };
    arguments.extend(["-chardev".to_owned(), format!("socket,id={id},path={path}{reconnect}")]);
    let device = match args.device {
        DeviceForm::Named if args.queue_pairs == 1 => format!("vhost-user-tls-pci,chardev={id}"),
        DeviceForm::Named => format!("vhost-user-tls-pci,chardev={id},queue-pairs={}", args.queue_pairs),
        DeviceForm::Generic => format!(
            "vhost-user-device-pci,chardev={id},virtio-id={},num_vqs={},config_size={}",
            virtio_tls_spec::VIRTIO_ID_TLS_DEFAULT,
            virtio_tls_spec::num_queues(args.queue_pairs),
            std::mem::size_of::<virtio_tls_spec::VirtioTlsConfig>()
        ),
    };
    arguments.extend(["-device".to_owned(), device]);
    arguments
}

/// `word` as one word for a POSIX shell.
fn shell_quoted(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "_-,./=:@%+".contains(c)) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// A usage error, as clap reports its own (exit 2).
fn usage_error(message: String) -> ExitCode {
    Cli::command().error(clap::error::ErrorKind::MissingRequiredArgument, message).print().ok();
    ExitCode::from(2)
}

fn run_serve(args: ServeArgs) -> ExitCode {
    let ServeArgs { socket_path, socket_group, fd, policy, queue_pairs, busy_poll_us, control_socket, audit_log, vm_name, sandbox: mode, user } =
        args;
    let Some(policy_path) = policy else {
        return usage_error("serving needs the VM's policy: --policy FILE".to_owned());
    };
    // Which descriptor, if any, to take before anything else: one of
    // systemd's is removed from the environment here either way.
    let handed_over = match (&socket_path, fd) {
        (Some(_), _) => None,
        (None, Some(fd)) => Some((fd, format!("--fd {fd}"))),
        (None, None) => match systemd_listen_fds() {
            Ok(Some(fd)) => Some((fd, format!("the socket systemd passed (LISTEN_FDS, descriptor {fd})"))),
            Ok(None) => {
                return usage_error(
                    "no vhost-user socket: give --socket-path PATH or --fd N, or start from a systemd .socket unit (LISTEN_FDS)".to_owned(),
                )
            }
            Err(error) => {
                eprintln!("vhost-tls: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
    let policy = match Policy::load(&policy_path) {
        Ok(policy) => Arc::new(policy),
        Err(error) => {
            eprintln!("vhost-tls: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Looked up now, while the name service files can still be read.
    let socket_gid = match socket_group.as_deref().map(group_id).transpose() {
        Ok(gid) => gid,
        Err(error) => {
            eprintln!("vhost-tls: --socket-group: {error}");
            return ExitCode::FAILURE;
        }
    };
    let listen_on = match (socket_path, handed_over) {
        (Some(path), _) => ListenOn::Path(path),
        (None, Some((fd, name))) => match handed_over_listener(fd) {
            Ok(listener) => ListenOn::Listener(listener),
            Err(error) => {
                eprintln!("vhost-tls: {name}: {error}");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => unreachable!("a socket path or a descriptor was found above"),
    };
    raise_fd_limit();
    // Only a socket file the backend made is removed at exit.
    let mut socket_dirs: Vec<PathBuf> = listen_on.own_path().map(sandbox::parent_dir).into_iter().collect();
    socket_dirs.extend(control_socket.as_deref().map(sandbox::parent_dir));
    let sandbox = SandboxPlan {
        mode,
        user,
        policy_dirs: sandbox::policy_dirs(&policy_path, &policy),
        socket_dirs,
        log_dirs: audit_log.as_deref().map(sandbox::parent_dir).into_iter().collect(),
        keep_net_bind_service: sandbox::maps_privileged_ports(&policy),
    };
    let options = ServeOptions { policy_path, control_socket, audit_log, vm_name, sandbox, socket_gid };
    let shape = DeviceShape { queue_pairs, busy_poll: std::time::Duration::from_micros(busy_poll_us) };
    match serve(listen_on, policy, shape, options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("vhost-tls: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The descriptor systemd passed, as sd_listen_fds(3) finds it: LISTEN_FDS
/// sockets from descriptor 3 on, meant for this process only when
/// LISTEN_PID is its pid. The variables are removed so that nothing this
/// process starts takes them as its own. `None` when systemd passed none.
fn systemd_listen_fds() -> Result<Option<RawFd>, String> {
    const SD_LISTEN_FDS_START: RawFd = 3;
    let Some(count) = std::env::var_os("LISTEN_FDS") else { return Ok(None) };
    let pid = std::env::var_os("LISTEN_PID");
    for name in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        // Single-threaded still (nothing has started a thread yet).
        std::env::remove_var(name);
    }
    let count = count.to_string_lossy().into_owned();
    let Some(pid) = pid else {
        return Err(format!("LISTEN_FDS={count} without LISTEN_PID: not passed by systemd's socket activation"));
    };
    let pid = pid.to_string_lossy().into_owned();
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Err(format!(
            "LISTEN_FDS={count} is meant for process {pid} (LISTEN_PID), not this one ({}): give --socket-path or --fd",
            std::process::id()
        ));
    }
    match count.parse::<u32>() {
        Ok(0) => Ok(None),
        Ok(1) => Ok(Some(SD_LISTEN_FDS_START)),
        Ok(n) => Err(format!(
            "systemd passed {n} sockets (LISTEN_FDS); one backend serves one VM on one socket: give the .socket unit one ListenStream="
        )),
        Err(_) => Err(format!("LISTEN_FDS={count} is not a number")),
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
    vm_name: Option<String>,
    sandbox: SandboxPlan,
    /// The group the vhost-user socket file gets (with mode 0660).
    socket_gid: Option<u32>,
}

fn serve(listen_on: ListenOn, policy: Arc<Policy>, shape: DeviceShape, options: ServeOptions) -> Result<(), Box<dyn std::error::Error>> {
    // The socket file to remove at exit: none for a handed-over socket.
    let socket_path: Option<PathBuf> = listen_on.own_path().map(PathBuf::from);
    let socket_name = match &listen_on {
        ListenOn::Path(path) => path.display().to_string(),
        ListenOn::Listener(listener) => format!("descriptor {}", std::os::fd::AsRawFd::as_raw_fd(listener)),
    };
    // Opened before anything listens, so a path that cannot be written
    // stops the backend before a VM depends on it.
    let audit_log = options.audit_log.as_deref().map(open_audit_log).transpose()?;
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
    // Connected while unconfined; READY=1 is sent once the backend listens.
    let readiness = systemd_notify_socket()?;
    // Confined once every socket is bound and before any thread starts;
    // the socket file gets its group first, before any front end can have
    // connected, while the backend may still change it.
    let confine = || {
        if let (Some(gid), Some(path)) = (options.socket_gid, &socket_path) {
            set_socket_group(path, gid).map_err(sandbox::SandboxError::Privileges)?;
        }
        sandbox::confine(&options.sandbox).map(|_| ())
    };
    let server = match Server::start_confined(listen_on, policy, shape.clone(), confine) {
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
    let instance = match options.vm_name.clone() {
        Some(name) => server.set_vm_name(name),
        None => server.backend().with_device(|device| device.instance()),
    };
    tracing::info!(vm = options.vm_name.as_deref().unwrap_or("-"), instance, "audit session ids are INSTANCE-N");
    let control = Arc::new(Control::new(server.clone(), options.policy_path));
    if let (Some(listener), Some(path)) = (control_listener, &options.control_socket) {
        control::serve(listener, control.clone())?;
        tracing::info!(control_socket = %path.display(), "control socket ready");
    }
    if let Some(readiness) = &readiness {
        readiness.send(b"READY=1\n").map_err(|e| format!("cannot tell systemd the backend is ready (NOTIFY_SOCKET): {e}"))?;
    }
    tracing::info!(socket = %socket_name, queue_pairs = shape.queue_pairs, busy_poll_us = shape.busy_poll.as_micros() as u64, "waiting for the front end");
    let on_signal = server.clone();
    let cleanup_path = socket_path.clone();
    let control_path = options.control_socket.clone();
    let audit_path = options.audit_log.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal == SIGHUP {
                // The outcome is logged either way; a refused policy
                // leaves the one in force.
                if let Ok(message) = control.reload(None) {
                    tracing::info!("SIGHUP: {message}");
                }
                // After logrotate renamed the file: records go to a new one
                // from now on (if it cannot be opened, to the old one still).
                if let Some(path) = &audit_path {
                    match open_audit_log(path) {
                        Ok(log) => {
                            on_signal.set_audit_log(Box::new(log));
                            tracing::info!(audit_log = %path.display(), "SIGHUP: audit log reopened");
                        }
                        Err(error) => tracing::warn!("SIGHUP: {error}; records still go to the file open before"),
                    }
                }
                continue;
            }
            tracing::info!(signal, "stopping");
            if on_signal.connected() {
                on_signal.stop();
            } else {
                // Still waiting for a front end: nothing to wind down.
                if let Some(path) = &cleanup_path {
                    let _ = std::fs::remove_file(path);
                }
                if let Some(path) = &control_path {
                    let _ = std::fs::remove_file(path);
                }
                std::process::exit(0);
            }
            break;
        }
    });
    let result = server.wait();
    if let Some(path) = &socket_path {
        let _ = std::fs::remove_file(path);
    }
    if let Some(path) = &options.control_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(result?)
}

/// Opens (creates) the audit log for appending. Peers, names and errors of
/// every session of the VM: the owner writes, the operator's group reads,
/// nobody else (a file that exists keeps its mode).
fn open_audit_log(path: &std::path::Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| format!("cannot open the audit log {}: {e}", path.display()))
}

/// What `--print-capabilities` prints: QEMU's VHostUserBackendCapabilities
/// (docs/interop/vhost-user.json). Its list of types has none for TLS, so
/// the type is "tls", which no management software will mistake for a
/// device it knows (docs/operator.md, "vhost-user conventions"); the
/// features are the optional `serve` options, as the gpu and input types
/// list theirs.
fn capabilities() -> serde_json::Value {
    serde_json::json!({
        "type": "tls",
        "features": ["queue-pairs", "control-socket", "audit-log", "vm-name", "socket-group", "busy-poll-us", "sandbox", "user"],
    })
}

/// The gid of group `name` (or `name` itself, a number).
fn group_id(name: &str) -> Result<u32, String> {
    let c_name = std::ffi::CString::new(name).map_err(|_| format!("no group {name:?}"))?;
    // SAFETY: a zeroed `group` is a valid out-parameter for getgrnam_r.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local of the size passed; the
    // result points into `entry` and `buffer` only.
    let rc = unsafe { libc::getgrnam_r(c_name.as_ptr(), &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found) };
    if rc == 0 && !found.is_null() {
        return Ok(entry.gr_gid);
    }
    name.parse::<u32>().map_err(|_| format!("no group {name:?}"))
}

/// Gives the vhost-user socket file `gid` and mode 0660: the VM's QEMU, in
/// that group, may connect; nobody else but the owner (and root).
fn set_socket_group(path: &std::path::Path, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let context = |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot give the socket {} group {gid}: {e}", path.display()));
    // Just bound, in a directory only the backend's user may write (the
    // unit's RuntimeDirectory), before any front end connected: nothing
    // else can have put a link in its place. lchown all the same.
    std::os::unix::fs::lchown(path, None, Some(gid)).map_err(context)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(context)
}

/// Takes ownership of descriptor `fd`, which must be a listening Unix
/// stream socket (`serve --fd`); it is made close-on-exec and blocking.
fn handed_over_listener(fd: RawFd) -> Result<UnixListener, String> {
    // SAFETY: F_GETFD only reads the descriptor's flags; a closed fd fails.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err("not an open descriptor".to_owned());
    }
    let int_option = |name: libc::c_int| -> Result<libc::c_int, String> {
        let mut value: libc::c_int = 0;
        let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: value and length are live locals of the sizes passed.
        let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, name, (&mut value as *mut libc::c_int).cast(), &mut length) };
        if rc == 0 { Ok(value) } else { Err(format!("not a socket: {}", std::io::Error::last_os_error())) }
    };
    if (int_option(libc::SO_DOMAIN)?, int_option(libc::SO_TYPE)?) != (libc::AF_UNIX, libc::SOCK_STREAM) {
        return Err("not a Unix stream socket".to_owned());
    }
    if int_option(libc::SO_ACCEPTCONN)? == 0 {
        return Err("the socket is not listening".to_owned());
    }
    // SAFETY: the descriptor is open (checked above) and was handed to this
    // process; this is its only owner, taken once at start-up.
    let listener = UnixListener::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: F_SETFD on a descriptor this function now owns.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(format!("cannot set close-on-exec: {}", std::io::Error::last_os_error()));
    }
    // The vhost-user daemon waits in accept: a socket unit may hand over a
    // non-blocking one.
    listener.set_nonblocking(false).map_err(|e| format!("cannot make it blocking: {e}"))?;
    Ok(listener)
}

/// systemd's notification socket ($NOTIFY_SOCKET, under `Type=notify`),
/// connected; `None` when not started so. A path, or `@` and an abstract
/// name.
fn systemd_notify_socket() -> Result<Option<std::os::unix::net::UnixDatagram>, String> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(None) };
    let socket = std::os::unix::net::UnixDatagram::unbound().map_err(|e| format!("NOTIFY_SOCKET: {e}"))?;
    let connected = match target.as_bytes().strip_prefix(b"@") {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|address| socket.connect_addr(&address)),
        None => socket.connect(&target),
    };
    connected.map_err(|e| format!("cannot reach systemd's NOTIFY_SOCKET {}: {e}", target.to_string_lossy()))?;
    Ok(Some(socket))
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
