//! Which policy this process runs under, loaded once, at its first
//! IPPROTO_TLS socket.
//!
//! 1. `$IPPROTO_TLS_POLICY`, the path of a policy file, if set;
//! 2. else `/etc/ipprototls/policy.toml`, if it exists;
//! 3. else [`Policy::builtin_default`] (the system's trust roots, TLS 1.2
//!    minimum, any destination but the host's own addresses).
//!
//! A policy that is named but cannot be used is an error, never a reason to
//! fall back to something looser: every IPPROTO_TLS socket() then fails.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tls_engine::tls::{ClientContext, ServerContext};
use tls_engine::Policy;

/// The environment variable naming the policy file.
pub const POLICY_ENV: &str = "IPPROTO_TLS_POLICY";
/// The system-wide policy file.
pub const SYSTEM_POLICY: &str = "/etc/ipprototls/policy.toml";

/// Where the policy comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySource {
    File(PathBuf),
    BuiltinDefault,
}

impl PolicySource {
    /// The source chosen by the environment variable (`env_value`) and the
    /// existence of the system file.
    pub fn choose(env_value: Option<std::ffi::OsString>, system_file: &Path) -> PolicySource {
        match env_value {
            // Set but empty is a mistake to report, not "unset".
            Some(path) => PolicySource::File(PathBuf::from(path)),
            None if system_file.exists() => PolicySource::File(system_file.to_path_buf()),
            None => PolicySource::BuiltinDefault,
        }
    }

    pub fn load(&self) -> Result<Policy, String> {
        match self {
            PolicySource::File(path) if path.as_os_str().is_empty() => {
                Err(format!("{POLICY_ENV} is set but empty: name a policy file, or unset it for the defaults"))
            }
            PolicySource::File(path) => Policy::load(path).map_err(|e| e.to_string()),
            PolicySource::BuiltinDefault => Ok(Policy::builtin_default()),
        }
    }
}

static CONTEXT: OnceLock<Result<Arc<ClientContext>, String>> = OnceLock::new();

/// The process's TLS client context, or why there is none.
pub fn context() -> Result<&'static Arc<ClientContext>, &'static str> {
    CONTEXT
        .get_or_init(|| {
            let source = PolicySource::choose(std::env::var_os(POLICY_ENV), Path::new(SYSTEM_POLICY));
            match source.load() {
                Ok(policy) => Ok(Arc::new(ClientContext::new(Arc::new(policy)))),
                Err(message) => {
                    // Said once per process: the program sees only an errno.
                    eprintln!("libipprototls: no IPPROTO_TLS sockets in this process: {message}");
                    Err(message)
                }
            }
        })
        .as_ref()
        .map_err(String::as_str)
}

/// The process's TLS server context (listening sockets), on the same
/// policy as [`context`]; `None` when there is no usable policy.
pub fn server_context() -> Option<&'static ServerContext> {
    static SERVER: OnceLock<ServerContext> = OnceLock::new();
    let client = context().ok()?;
    Some(SERVER.get_or_init(|| ServerContext::with_budget(client.policy().clone(), client.budget().clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins_then_the_system_file_then_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("policy.toml");
        assert_eq!(PolicySource::choose(None, &system), PolicySource::BuiltinDefault);
        std::fs::write(&system, "").unwrap();
        assert_eq!(PolicySource::choose(None, &system), PolicySource::File(system.clone()));
        let mine = dir.path().join("mine.toml");
        assert_eq!(PolicySource::choose(Some(mine.clone().into()), &system), PolicySource::File(mine));
    }

    #[test]
    fn a_named_policy_that_cannot_be_used_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = PolicySource::File(dir.path().join("missing.toml"));
        assert!(missing.load().unwrap_err().contains("cannot read the policy"));
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[tls]\nmin_version = \"1.1\"\n").unwrap();
        let message = PolicySource::File(bad).load().unwrap_err();
        assert!(message.contains("bad.toml:2"), "{message}");
        assert!(PolicySource::File(PathBuf::new()).load().unwrap_err().contains("empty"));
        assert!(PolicySource::BuiltinDefault.load().is_ok());
    }
}
