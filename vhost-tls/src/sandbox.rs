//! The backend confines itself once everything it needs is open, as
//! virtiofsd does: the guest is untrusted and the backend runs on the
//! hypervisor host, so a bug the guest can reach must not become the host's
//! problem.
//!
//! [`confine`] runs once, on the main thread, after the policy, its CA,
//! certificate and key files, the audit log, the control socket and the
//! vhost-user socket are open, and before any thread starts (threads
//! inherit all of it). In order:
//!
//! 1. **privileges**: started as root, the backend switches to an
//!    unprivileged user (`nobody` unless `--user` names another), with that
//!    user's group and no supplementary groups; every capability set is
//!    cleared (the bounding set too, when it may be) and `no_new_privs` is
//!    set;
//! 2. **filesystem** (Landlock): reading only beneath the directories of the
//!    policy's files (for reloads), the host's trust store, the few files
//!    host name resolution reads and the system libraries NSS may load;
//!    writing nowhere (the audit log is already open); removing files only
//!    in the directories of its own sockets, to clean them up at exit;
//!    and (Landlock's signal scope, ABI 6, Linux 6.12) signalling no
//!    process outside its own sandbox;
//! 3. **system calls** (seccomp): an allow-list; anything else kills the
//!    process (or, in [`SandboxMode::Log`], is allowed and logged by the
//!    kernel, to find what is missing). Signals go only to the backend's
//!    own threads (tgkill naming its own pid), so that backends of other
//!    VMs, which may run as the same user, are out of its reach whatever
//!    the kernel's Landlock.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule};

/// How much the backend confines itself (`serve --sandbox`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxMode {
    /// Privilege drop, Landlock where the kernel has it (a log line where it
    /// has not), and a seccomp allow-list that kills the process on any
    /// other system call. The default.
    On,
    /// As `on`, but refuse to start when the kernel cannot enforce Landlock.
    Strict,
    /// As `on`, but a system call outside the allow-list is allowed and
    /// logged by the kernel (`dmesg`, audit type 1326): for finding what a
    /// new code path needs, never for production.
    Log,
    /// No confinement at all: for debugging.
    None,
}

/// What [`confine`] must leave reachable.
#[derive(Clone, Debug)]
pub struct SandboxPlan {
    pub mode: SandboxMode,
    /// The user to switch to when started as root (`nobody` if `None`);
    /// ignored otherwise.
    pub user: Option<String>,
    /// Readable (files and listings) beneath each, for policy reloads.
    pub policy_dirs: Vec<PathBuf>,
    /// Directories in which the backend may remove files: those of its
    /// vhost-user and control sockets, which it removes at exit.
    pub socket_dirs: Vec<PathBuf>,
    /// Directories in which the backend may open (and create) files for
    /// writing: the audit log's, so that SIGHUP can reopen a rotated log.
    pub log_dirs: Vec<PathBuf>,
    /// Keep CAP_NET_BIND_SERVICE (when the process has it): the policy maps
    /// a guest port to a privileged host port, bound when the guest listens.
    pub keep_net_bind_service: bool,
}

/// What [`confine`] did, for the log line and for `strict`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxReport {
    /// `uid:gid` switched to, or `None` when not started as root.
    pub switched_to: Option<(u32, u32)>,
    pub landlock: LandlockOutcome,
    pub seccomp: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LandlockOutcome {
    Full,
    Partial,
    /// The kernel has no Landlock (or it is disabled at boot).
    Unavailable,
    /// `--sandbox none`.
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("no user {0:?} to run as (--user)")]
    NoSuchUser(String),
    #[error("cannot drop privileges: {0}")]
    Privileges(#[source] io::Error),
    #[error("cannot set up Landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error("--sandbox strict: this kernel cannot enforce every Landlock right the backend asks for (Landlock ABI 6, Linux 6.12; --sandbox on runs with what there is)")]
    LandlockRequired,
    #[error("cannot install the seccomp filter: {0}")]
    Seccomp(#[from] seccompiler::Error),
    #[error("cannot build the seccomp filter: {0}")]
    SeccompRules(#[from] seccompiler::BackendError),
}

/// What a reload may read, once [`confine`] has run (see [`reload_hint`]).
static RELOAD_SCOPE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// For a reload that could not read a file: why, when the sandbox is the
/// likely cause (an empty string otherwise).
pub fn reload_hint(error: &str) -> String {
    match RELOAD_SCOPE.get() {
        Some(scope) if error.contains("Permission denied") => format!(" ({scope})"),
        _ => String::new(),
    }
}

/// The user an unprivileged backend runs as when root starts it and no
/// `--user` is given.
pub const DEFAULT_USER: &str = "nobody";

/// Files host name resolution (getaddrinfo on the resolver threads) reads.
const RESOLVER_FILES: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/ld.so.cache",
];

/// Directories read beneath, besides the policy's: the host's trust store
/// (policies with `system_roots`) and the libraries NSS may load for the
/// `hosts` line of nsswitch.conf. Nothing secret is in them.
const SYSTEM_READ_DIRS: &[&str] = &[
    "/etc/ssl",
    "/etc/pki",
    "/etc/ca-certificates",
    "/usr/share/ca-certificates",
    "/usr/local/share/ca-certificates",
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
];

/// The directories a reload must be able to read: those of the policy file
/// and of every file the policy was read from (includes, CA bundles,
/// certificate chains, keys). Directories, not files: editors replace a
/// file rather than rewrite it, and a rule on a file holds its old inode.
pub fn policy_dirs(policy_path: &Path, policy: &tls_engine::Policy) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for file in std::iter::once(policy_path).chain(policy.files.iter().map(PathBuf::as_path)) {
        let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
        let dir = absolute.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// The directory a socket file is in, for [`SandboxPlan::socket_dirs`].
pub fn parent_dir(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    absolute.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"))
}

/// Confines the calling process as `plan` says. Call it single-threaded:
/// Landlock and the privilege drop apply to the calling thread and the
/// threads it starts afterwards.
pub fn confine(plan: &SandboxPlan) -> Result<SandboxReport, SandboxError> {
    if plan.mode == SandboxMode::None {
        tracing::warn!("sandbox off (--sandbox none): the backend keeps its privileges and every system call");
        return Ok(SandboxReport { switched_to: None, landlock: LandlockOutcome::Off, seccomp: false });
    }
    // Looked up and opened while still privileged: /etc/passwd and the
    // policy's directories may be out of the unprivileged user's reach.
    let target = if is_root() { Some(lookup_user(plan.user.as_deref().unwrap_or(DEFAULT_USER))?) } else { None };
    let ruleset = landlock_ruleset(plan)?;
    let kept = kept_capabilities(plan);
    // While CAP_SETPCAP is still there: switching users clears it.
    drop_bounding_set(&kept)?;
    if let Some((uid, gid)) = target {
        switch_user(uid, gid, !kept.is_empty())?;
    }
    drop_capabilities(&kept)?;
    set_no_new_privs()?;
    let status = ruleset.restrict_self()?;
    tracing::debug!(?status, "Landlock");
    let landlock = match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockOutcome::Full,
        RulesetStatus::PartiallyEnforced => LandlockOutcome::Partial,
        RulesetStatus::NotEnforced => LandlockOutcome::Unavailable,
    };
    match landlock {
        LandlockOutcome::Unavailable | LandlockOutcome::Partial if plan.mode == SandboxMode::Strict => {
            return Err(SandboxError::LandlockRequired)
        }
        LandlockOutcome::Unavailable => {
            tracing::warn!("Landlock is not available on this kernel: the filesystem is not confined (--sandbox strict refuses to run so)")
        }
        LandlockOutcome::Partial => tracing::warn!(
            "this kernel's Landlock is older than the backend's (ABI 6): the filesystem is confined, but not every right is (--sandbox strict refuses to run so)"
        ),
        LandlockOutcome::Full | LandlockOutcome::Off => {}
    }
    // Before the filter: getuid is not on its list.
    let readable: Vec<String> = plan.policy_dirs.iter().map(|dir| dir.display().to_string()).collect();
    let _ = RELOAD_SCOPE.set(format!(
        "the sandbox lets a reload read policy files only beneath {} as uid {} (docs/operator.md, \"The sandbox\")",
        readable.join(", "),
        // SAFETY: getuid has no preconditions and cannot fail.
        unsafe { libc::getuid() }
    ));
    install_seccomp(plan.mode)?;
    let report = SandboxReport { switched_to: target, landlock, seccomp: true };
    tracing::info!(
        uid = report.switched_to.map(|(uid, _)| uid),
        gid = report.switched_to.map(|(_, gid)| gid),
        capabilities = ?kept,
        landlock = ?report.landlock,
        seccomp = if plan.mode == SandboxMode::Log { "log" } else { "kill" },
        "sandbox on"
    );
    Ok(report)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `name`'s uid and primary gid (a number is taken as a uid).
fn lookup_user(name: &str) -> Result<(u32, u32), SandboxError> {
    let c_name = CString::new(name).map_err(|_| SandboxError::NoSuchUser(name.to_owned()))?;
    let mut entry: libc::passwd = zeroed_passwd();
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local of the right type; buffer's
    // length is passed with it; getpwnam_r writes only within them.
    let rc = unsafe { libc::getpwnam_r(c_name.as_ptr(), &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found) };
    if rc == 0 && !found.is_null() {
        return Ok((entry.pw_uid, entry.pw_gid));
    }
    match name.parse::<u32>() {
        Ok(uid) => Ok((uid, uid)),
        Err(_) => Err(SandboxError::NoSuchUser(name.to_owned())),
    }
}

fn zeroed_passwd() -> libc::passwd {
    // SAFETY: passwd is plain data (integers and pointers); all-zero is a
    // valid value, and getpwnam_r overwrites it before it is read.
    unsafe { std::mem::zeroed() }
}

/// Switches every id (real, effective, saved) to `uid`/`gid` and leaves
/// only `gid` as a group; with `keep_capabilities`, the permitted set
/// survives the switch for [`drop_capabilities`] to trim. Single-threaded
/// callers only: these calls act on the calling thread (glibc does
/// broadcast them, but nothing else runs).
fn switch_user(uid: u32, gid: u32, keep_capabilities: bool) -> Result<(), SandboxError> {
    let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(SandboxError::Privileges(io::Error::last_os_error())) };
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, libc::c_ulong::from(keep_capabilities), 0, 0, 0) })?;
    // SAFETY: setgroups reads one gid_t from a live local.
    check(unsafe { libc::setgroups(1, &gid) })?;
    // SAFETY: plain system calls on integers.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(uid, uid, uid) })?;
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) })?;
    // Root cannot come back: setuid(0) must now fail.
    // SAFETY: as above.
    if uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(SandboxError::Privileges(io::Error::other("setuid(0) still succeeds after the switch")));
    }
    Ok(())
}

/// The capabilities the backend keeps: CAP_NET_BIND_SERVICE when the plan
/// asks for it and the process has it (root, or given it by a service
/// manager); none otherwise.
fn kept_capabilities(plan: &SandboxPlan) -> caps::CapsHashSet {
    use caps::{CapSet, Capability};
    let mut kept = caps::CapsHashSet::new();
    if plan.keep_net_bind_service
        && caps::has_cap(None, CapSet::Permitted, Capability::CAP_NET_BIND_SERVICE).unwrap_or(false)
    {
        kept.insert(Capability::CAP_NET_BIND_SERVICE);
    }
    kept
}

fn capability_error(error: caps::errors::CapsError) -> SandboxError {
    SandboxError::Privileges(io::Error::other(error.to_string()))
}

/// Shrinks the bounding set to `kept`, so no exec could regain anything
/// else. It can only shrink with CAP_SETPCAP; without it, there is nothing
/// to regain anyway (no_new_privs follows).
fn drop_bounding_set(kept: &caps::CapsHashSet) -> Result<(), SandboxError> {
    use caps::{CapSet, Capability};
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for capability in caps::read(None, CapSet::Bounding).map_err(capability_error)? {
            if !kept.contains(&capability) {
                caps::drop(None, CapSet::Bounding, capability).map_err(capability_error)?;
            }
        }
    }
    Ok(())
}

/// Leaves `kept` (permitted and effective) and nothing else: started by
/// root, or given capabilities by a service manager, the backend needs no
/// other.
fn drop_capabilities(kept: &caps::CapsHashSet) -> Result<(), SandboxError> {
    use caps::CapSet;
    // Ambient capabilities exist since Linux 4.3; where they do not, there
    // are none to clear.
    let _ = caps::clear(None, CapSet::Ambient);
    caps::clear(None, CapSet::Inheritable).map_err(capability_error)?;
    // Effective first: it must stay a subset of permitted.
    caps::set(None, CapSet::Effective, kept).map_err(capability_error)?;
    caps::set(None, CapSet::Permitted, kept).map_err(capability_error)?;
    Ok(())
}

fn set_no_new_privs() -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SandboxError::Privileges(io::Error::last_os_error()));
    }
    Ok(())
}

/// The Landlock rules, with every path opened now (while privileged).
/// Paths that do not exist on this host are left out.
fn landlock_ruleset(plan: &SandboxPlan) -> Result<RulesetCreated, SandboxError> {
    let read: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    let mut grants: Vec<(PathBuf, BitFlags<AccessFs>)> = Vec::new();
    grants.extend(plan.policy_dirs.iter().map(|dir| (dir.clone(), read)));
    grants.extend(SYSTEM_READ_DIRS.iter().map(|dir| (PathBuf::from(dir), read)));
    // rustls-native-certs reads these instead of the defaults when set.
    for variable in ["SSL_CERT_FILE", "SSL_CERT_DIR"] {
        if let Some(value) = std::env::var_os(variable) {
            grants.extend(std::env::split_paths(&value).map(|path| (path, read)));
        }
    }
    for file in RESOLVER_FILES {
        let path = Path::new(file);
        grants.push((path.to_owned(), read));
        // resolv.conf is often a link to a file a resolver daemon replaces
        // (/run/systemd/resolve/stub-resolv.conf): its directory, so the
        // replacement is readable too.
        if let Ok(target) = std::fs::canonicalize(path) {
            if let (true, Some(dir)) = (target != path, target.parent()) {
                grants.push((dir.to_owned(), read));
            }
        }
    }
    grants.extend(plan.socket_dirs.iter().map(|dir| (dir.clone(), BitFlags::from(AccessFs::RemoveFile))));
    grants.extend(plan.log_dirs.iter().map(|dir| (dir.clone(), AccessFs::WriteFile | AccessFs::MakeReg)));
    // A path that does not exist here (no /etc/gai.conf, no /lib64) grants
    // nothing; a file gets only the rights that apply to files (Landlock
    // refuses directory rights on one).
    let rules = grants.into_iter().filter_map(|(path, access)| {
        let fd = PathFd::new(&path).ok()?;
        let access = if std::fs::metadata(&path).ok()?.is_dir() { access } else { access & AccessFs::from_file(ABI::V6) };
        Some(Ok::<_, landlock::RulesetError>(PathBeneath::new(fd, access)))
    });
    Ok(Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(ABI::V6))?
        // No signal to a process outside this sandbox (another VM's
        // backend under the same user, say).
        .scope(Scope::Signal)?
        .create()?
        .add_rules(rules)?)
}

fn install_seccomp(mode: SandboxMode) -> Result<(), SandboxError> {
    let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH).map_err(SandboxError::SeccompRules)?;
    let mismatch = if mode == SandboxMode::Log { SeccompAction::Log } else { SeccompAction::KillProcess };
    let filter = SeccompFilter::new(allowed_syscalls()?, mismatch, SeccompAction::Allow, arch)?;
    let program: seccompiler::BpfProgram = filter.try_into()?;
    // TSYNC: every thread, should one exist already.
    seccompiler::apply_filter_all_threads(&program)?;
    Ok(())
}

/// The system calls the backend makes once confined, found by tracing the
/// test suite and real guests (`strace -f` over `serve`): the vhost-user
/// session (messages with descriptors, guest memory maps), the event loop,
/// sockets, resolver threads, policy reloads and the audit log.
fn allowed_syscalls() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for syscall in ALWAYS_ALLOWED {
        rules.insert(*syscall, Vec::new());
    }
    // ioctl only for non-blocking mode and close-on-exec on descriptors
    // (std's set_nonblocking) and the bytes waiting on a socket.
    let ioctl_requests = [libc::FIONBIO, libc::FIOCLEX, libc::FIONCLEX, libc::FIONREAD];
    rules.insert(libc::SYS_ioctl, one_of(1, &ioctl_requests)?);
    // prctl only to name threads (std does it for named threads).
    rules.insert(libc::SYS_prctl, one_of(0, &[libc::PR_SET_NAME as u64, libc::PR_GET_NAME as u64])?);
    // Signals only to this process's own threads (the runtime's tgkill,
    // abort's): never to another process, another VM's backend included.
    rules.insert(libc::SYS_tgkill, one_of(0, &[u64::from(std::process::id())])?);
    Ok(rules)
}

/// Rules matching when argument `index` is one of `values`.
fn one_of(index: u8, values: &[u64]) -> Result<Vec<SeccompRule>, SandboxError> {
    values
        .iter()
        .map(|value| {
            let condition = SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *value)?;
            Ok(SeccompRule::new(vec![condition])?)
        })
        .collect()
}

const ALWAYS_ALLOWED: &[i64] = &[
    // Memory: the allocator, guest memory regions (mmap of the memfds the
    // front end sends), thread stacks.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    // Descriptors and files (opening is confined by Landlock).
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_openat,
    libc::SYS_getdents64,
    libc::SYS_readlinkat,
    libc::SYS_unlinkat,
    // Event loops: vhost-user-backend's and the device's (mio), eventfds,
    // timers.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_ppoll,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    // Sockets: TLS peers, guest listeners, the control socket, the
    // vhost-user socket, the resolver.
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_shutdown,
    // Threads: resolver helpers, the control socket, vring workers.
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Signals (signal-hook's handlers, thread start-up); restart_syscall
    // resumes a timed sleep (a resolver's poll, nanosleep) after the
    // process was stopped and continued (SIGSTOP, SIGCONT).
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    // Time and randomness (rustls, timeouts, the audit log's times).
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    // The resolver asks for the host's name.
    libc::SYS_uname,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_stat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lstat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_open,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_readlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
];

/// Whether the policy maps a guest port to a host port below
/// `net.ipv4.ip_unprivileged_port_start` (1024 unless changed): binding it
/// when the guest listens needs CAP_NET_BIND_SERVICE.
pub fn maps_privileged_ports(policy: &tls_engine::Policy) -> bool {
    let first_unprivileged = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse::<u16>().ok())
        .unwrap_or(1024);
    policy.server.listen.iter().any(|mapping| mapping.host.port() != 0 && mapping.host.port() < first_unprivileged)
}
