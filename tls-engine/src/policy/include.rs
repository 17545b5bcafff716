//! `include`: a VM's policy file built on a shared base file.
//!
//! ```toml
//! include = "base.toml"      # relative to this file; before any [section]
//! ```
//!
//! Merge rules (the including file is "top", the included one "base"):
//!
//! * Keys with a value — strings, numbers, booleans and plain lists such as
//!   `cipher_suites` or `ca_files` — are taken from the top file when it
//!   sets them, else from the base. A list is replaced whole, never merged
//!   element by element.
//! * Arrays of tables — `[[destinations.rules]]`, `[[server.listen]]`,
//!   `[[server.identities]]` — are concatenated: the top file's entries
//!   first, then the base's. The first matching destinations rule decides,
//!   so a VM's rules come before the shared ones; its first identity is the
//!   default certificate.
//! * `[client]`'s certificate_chain and private_key go together: a top
//!   file that sets either replaces the base's pair.
//! * A base may include another base; the chain is applied from the
//!   deepest file up. Including a file that is already in the chain is an
//!   error naming the cycle; a missing file is an error at the `include`
//!   line.
//!
//! The merged policy is validated as a whole, and every message names the
//! file and line the offending value is written on. For that, each file is
//! parsed as if it started at its own offset of one address space: its text
//! is preceded by a comment as long as all files read before it, so the
//! byte spans toml reports are distinct across files and [`SourceFile`]
//! maps each back to its file.

use std::path::{Path, PathBuf};

use super::{PolicyError, PolicyFile};

/// Files deeper than this are refused, so a runaway chain of distinct
/// files (generated, say) cannot make loading unbounded.
const MAX_INCLUDE_DEPTH: usize = 16;

/// One file of a policy, at its place in the shared offset space.
pub(super) struct SourceFile {
    pub(super) origin: String,
    pub(super) text: String,
    /// Offset of the file's first byte in the shared space.
    pub(super) start: usize,
    /// Relative paths in this file resolve against this directory.
    pub(super) base_dir: PathBuf,
    /// Canonical path, to recognize a file included twice in one chain.
    pub(super) canonical: Option<PathBuf>,
}

impl SourceFile {
    #[cfg(test)]
    pub(super) fn single(origin: &str, text: &str) -> SourceFile {
        SourceFile { origin: origin.to_owned(), text: text.to_owned(), start: 0, base_dir: PathBuf::from("."), canonical: None }
    }

    /// 1-based line of a shared-space offset inside this file.
    pub(super) fn line_of(&self, offset: usize) -> usize {
        let local = offset.saturating_sub(self.start).min(self.text.len());
        // Bytes, not str slicing: an offset inside a multi-byte character
        // must not panic.
        self.text.as_bytes()[..local].iter().filter(|&&b| b == b'\n').count() + 1
    }

    fn error(&self, offset: usize, message: String) -> PolicyError {
        PolicyError { origin: self.origin.clone(), line: Some(self.line_of(offset)), message }
    }

    /// Parses the file at its offset: a comment of `start` bytes first.
    fn parse(&self) -> Result<PolicyFile, PolicyError> {
        let mut padded = String::with_capacity(self.start + self.text.len());
        match self.start {
            0 => {}
            1 => padded.push('\n'),
            n => {
                padded.push('#');
                padded.extend(std::iter::repeat_n(' ', n - 2));
                padded.push('\n');
            }
        }
        padded.push_str(&self.text);
        toml::from_str(&padded).map_err(|e| PolicyError {
            origin: self.origin.clone(),
            line: e.span().map(|span| self.line_of(span.start)),
            message: e.message().trim().to_owned(),
        })
    }
}

/// Parses `text` and the chain of files it includes, and merges them.
/// Returns the files (the top one first) for messages, and the merged
/// sections.
pub(super) fn load_merged(text: &str, origin: &str, base_dir: &Path) -> Result<(Vec<SourceFile>, PolicyFile), PolicyError> {
    let top = SourceFile {
        origin: origin.to_owned(),
        text: text.to_owned(),
        start: 0,
        base_dir: base_dir.to_owned(),
        // The top file is text, not necessarily a file; when it is one,
        // `origin` is its path.
        canonical: std::fs::canonicalize(origin).ok(),
    };
    let mut parsed = vec![top.parse()?];
    let mut files = vec![top];
    while let Some(include) = parsed.last().and_then(|file| file.include.clone()) {
        let including = files.last().expect("one file per parsed file");
        let offset = include.span().start;
        let written = include.get_ref();
        if written.trim().is_empty() {
            return Err(including.error(offset, "include is empty: name a policy file".to_owned()));
        }
        let path = including.base_dir.join(written);
        let canonical = std::fs::canonicalize(&path)
            .map_err(|e| including.error(offset, format!("cannot read included policy {}: {e}", path.display())))?;
        if files.iter().any(|file| file.canonical.as_ref() == Some(&canonical)) {
            let chain: Vec<&str> = files.iter().map(|file| file.origin.as_str()).collect();
            return Err(including.error(
                offset,
                format!("include cycle: {} -> {}", chain.join(" -> "), path.display()),
            ));
        }
        if files.len() >= MAX_INCLUDE_DEPTH {
            return Err(including.error(offset, format!("includes nest deeper than {MAX_INCLUDE_DEPTH} files")));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| including.error(offset, format!("cannot read included policy {}: {e}", path.display())))?;
        let file = SourceFile {
            origin: path.display().to_string(),
            start: including.start + including.text.len() + 1,
            base_dir: path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")),
            canonical: Some(canonical),
            text,
        };
        parsed.push(file.parse()?);
        files.push(file);
    }
    let merged = parsed.into_iter().rev().reduce(|base, top| overlay(top, base)).expect("the top file at least");
    Ok((files, merged))
}

/// `top` over `base`, by the rules in the module documentation.
fn overlay(top: PolicyFile, base: PolicyFile) -> PolicyFile {
    fn then<T>(mut first: Vec<T>, second: Vec<T>) -> Vec<T> {
        first.extend(second);
        first
    }
    PolicyFile {
        include: top.include,
        tls: super::TlsSection {
            min_version: top.tls.min_version.or(base.tls.min_version),
            max_version: top.tls.max_version.or(base.tls.max_version),
            cipher_suites: top.tls.cipher_suites.or(base.tls.cipher_suites),
            application_identities: top.tls.application_identities.or(base.tls.application_identities),
        },
        trust: super::TrustSection {
            system_roots: top.trust.system_roots.or(base.trust.system_roots),
            ca_files: top.trust.ca_files.or(base.trust.ca_files),
        },
        destinations: super::DestinationsSection {
            default: top.destinations.default.or(base.destinations.default),
            rules: then(top.destinations.rules, base.destinations.rules),
        },
        limits: super::LimitsSection {
            max_sockets: top.limits.max_sockets.or(base.limits.max_sockets),
            socket_buffer_bytes: top.limits.socket_buffer_bytes.or(base.limits.socket_buffer_bytes),
            handshake_timeout_secs: top.limits.handshake_timeout_secs.or(base.limits.handshake_timeout_secs),
            connect_timeout_secs: top.limits.connect_timeout_secs.or(base.limits.connect_timeout_secs),
            max_pending_handshakes: top.limits.max_pending_handshakes.or(base.limits.max_pending_handshakes),
            handshakes_per_second: top.limits.handshakes_per_second.or(base.limits.handshakes_per_second),
            vm_buffer_mib: top.limits.vm_buffer_mib.or(base.limits.vm_buffer_mib),
        },
        server: super::server::ServerSection {
            listen: then(top.server.listen, base.server.listen),
            identities: then(top.server.identities, base.server.identities),
            client_ca_files: top.server.client_ca_files.or(base.server.client_ca_files),
        },
        // The certificate and its key go together: a file that names
        // either replaces both.
        client: if top.client.certificate_chain.is_some() || top.client.private_key.is_some() { top.client } else { base.client },
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::path::Path;

    use crate::policy::{Policy, TlsVersion, Verdict};

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    const BASE: &str = "\
[tls]
min_version = \"1.2\"
max_version = \"1.3\"

[destinations]
default = \"deny\"

[[destinations.rules]]
action = \"deny\"
addresses = [\"10.0.0.0/8\"]

[[destinations.rules]]
action = \"allow\"
ports = [443]

[limits]
max_sockets = 100
socket_buffer_bytes = 65536
";

    #[test]
    fn values_override_and_rules_extend() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "shared/base.toml", BASE);
        let vm = write(
            dir.path(),
            "vm1.toml",
            "include = \"shared/base.toml\"\n\n[tls]\nmin_version = \"1.3\"\n\n[[destinations.rules]]\naction = \"allow\"\naddresses = [\"10.1.2.3\"]\n\n[limits]\nmax_sockets = 7\n",
        );
        let policy = Policy::load(&vm).unwrap_or_else(|e| panic!("{e}"));
        // Overridden by the VM file, and kept from the base.
        assert_eq!((policy.min_version, policy.max_version), (TlsVersion::Tls13, TlsVersion::Tls13));
        assert_eq!(policy.limits.max_sockets, 7);
        assert_eq!(policy.limits.socket_buffer_bytes, 65536);
        // The VM's rule comes first, so its allow wins over the base's deny
        // of 10/8; the base's rules and default still apply after it.
        let destinations = &policy.destinations;
        assert_eq!(destinations.check(None, ip("10.1.2.3"), 8080), Verdict::Allow);
        let base_file = dir.path().join("shared/base.toml").display().to_string();
        assert_eq!(
            destinations.check(None, ip("10.9.9.9"), 443),
            Verdict::Deny(format!("denied by destinations rule 2 ({base_file}:8)"))
        );
        assert_eq!(destinations.check(None, ip("192.0.2.1"), 443), Verdict::Allow);
        assert!(!destinations.check(None, ip("192.0.2.1"), 80).is_allow());
        // The effective policy shows where each rule came from.
        let shown = policy.to_string();
        assert!(shown.contains("# rule 1, line 6\n[[destinations.rules]]\naction = \"allow\"\naddresses = [\"10.1.2.3/32\"]"), "{shown}");
        assert!(shown.contains(&format!("# rule 3, {base_file}:12\n")), "{shown}");
        assert!(shown.contains("min_version = \"1.3\""), "{shown}");
    }

    #[test]
    fn paths_resolve_next_to_the_file_that_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["ca.test".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        write(dir.path(), "shared/ca.pem", &params.self_signed(&key).unwrap().pem());
        write(dir.path(), "shared/base.toml", "[trust]\nsystem_roots = false\nca_files = [\"ca.pem\"]\n");
        let vm = write(dir.path(), "vms/vm1.toml", "include = \"../shared/base.toml\"\n");
        assert_eq!(Policy::load(&vm).unwrap_or_else(|e| panic!("{e}")).roots.len(), 1);
    }

    #[test]
    fn a_policy_lists_every_file_it_was_read_from() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["ca.test".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        write(dir.path(), "shared/ca.pem", &params.self_signed(&key).unwrap().pem());
        let base = write(dir.path(), "shared/base.toml", "[trust]\nsystem_roots = false\nca_files = [\"ca.pem\"]\n");
        let vm = write(dir.path(), "vms/vm1.toml", "include = \"../shared/base.toml\"\n");
        let policy = Policy::load(&vm).unwrap_or_else(|e| panic!("{e}"));
        let canonical = |path: &Path| std::fs::canonicalize(path).unwrap();
        let files: Vec<_> = policy.files.iter().map(|file| canonical(file)).collect();
        assert_eq!(files, [canonical(&vm), canonical(&base), canonical(&dir.path().join("shared/ca.pem"))]);
        assert!(Policy::builtin_default().files.is_empty());
    }

    #[test]
    fn errors_name_the_file_and_line_they_are_in() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "base.toml", "[tls]\nmin_version = \"1.2\"\n\n[limits]\nmax_sockets = 0\n");
        let vm = write(dir.path(), "vm1.toml", "include = \"base.toml\"\n\n[tls]\nmax_version = \"1.3\"\n");
        let error = Policy::load(&vm).unwrap_err();
        assert_eq!((error.origin.as_str(), error.line), (base.display().to_string().as_str(), Some(5)), "{error}");
        assert!(error.message.contains("max_sockets = 0 is outside"), "{error}");

        // A syntax error and an unknown key in the base.
        write(dir.path(), "base.toml", "[tls]\n\nmin_version = = \"1.2\"\n");
        let error = Policy::load(&vm).unwrap_err();
        assert_eq!((error.origin.as_str(), error.line), (base.display().to_string().as_str(), Some(3)), "{error}");
        write(dir.path(), "base.toml", "[limits]\nmax_sockets = 5\nmax_sokets = 5\n");
        let error = Policy::load(&vm).unwrap_err();
        assert_eq!((error.origin.as_str(), error.line), (base.display().to_string().as_str(), Some(3)), "{error}");
        assert!(error.message.contains("unknown field `max_sokets`"), "{error}");

        // A conflict between the files is reported where the VM's value is.
        write(dir.path(), "base.toml", "[tls]\nmax_version = \"1.2\"\n");
        std::fs::write(&vm, "include = \"base.toml\"\n[tls]\nmin_version = \"1.3\"\n").unwrap();
        let error = Policy::load(&vm).unwrap_err();
        assert_eq!(error.to_string(), format!("{}:3: min_version TLSv1.3 is above max_version TLSv1.2", vm.display()));

        // A server port mapped in both files.
        write(dir.path(), "base.toml", "[[server.listen]]\nguest_port = 443\nhost = \"127.0.0.1:9443\"\n");
        std::fs::write(&vm, "include = \"base.toml\"\n[[server.listen]]\nguest_port = 443\nhost = \"127.0.0.1:8443\"\n").unwrap();
        let error = Policy::load(&vm).unwrap_err();
        assert_eq!((error.origin.as_str(), error.line), (base.display().to_string().as_str(), Some(2)), "{error}");
        assert!(error.message.contains("guest_port 443 is mapped twice"), "{error}");
    }

    #[test]
    fn missing_files_and_cycles_are_errors_at_the_include() {
        let dir = tempfile::tempdir().unwrap();
        let vm = write(dir.path(), "vm1.toml", "# the VM\ninclude = \"nowhere.toml\"\n");
        let error = Policy::load(&vm).unwrap_err();
        assert_eq!((error.origin.as_str(), error.line), (vm.display().to_string().as_str(), Some(2)), "{error}");
        assert!(error.message.contains("cannot read included policy") && error.message.contains("nowhere.toml"), "{error}");

        let a = write(dir.path(), "a.toml", "include = \"b.toml\"\n");
        let b = write(dir.path(), "b.toml", "\n\ninclude = \"a.toml\"\n");
        let error = Policy::load(&a).unwrap_err();
        assert_eq!((error.origin.as_str(), error.line), (b.display().to_string().as_str(), Some(3)), "{error}");
        assert!(error.message.starts_with("include cycle: "), "{error}");
        assert!(error.message.contains(&format!("{} -> {} ->", a.display(), b.display())), "{error}");

        let itself = write(dir.path(), "self.toml", "include = \"self.toml\"\n");
        let error = Policy::load(&itself).unwrap_err();
        assert!(error.to_string().starts_with(&format!("{}:1: include cycle", itself.display())), "{error}");

        write(dir.path(), "empty.toml", "include = \"\"\n");
        let error = Policy::load(&dir.path().join("empty.toml")).unwrap_err();
        assert!(error.message.contains("include is empty"), "{error}");
    }

    #[test]
    fn a_chain_applies_from_the_deepest_file_up() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "site.toml", "[limits]\nmax_sockets = 10\nconnect_timeout_secs = 5\nhandshake_timeout_secs = 6\n");
        write(dir.path(), "tier.toml", "include = \"site.toml\"\n[limits]\nmax_sockets = 20\nconnect_timeout_secs = 7\n");
        let vm = write(dir.path(), "vm.toml", "include = \"tier.toml\"\n[limits]\nmax_sockets = 30\n");
        let limits = Policy::load(&vm).unwrap_or_else(|e| panic!("{e}")).limits;
        assert_eq!((limits.max_sockets, limits.connect_timeout_secs, limits.handshake_timeout_secs), (30, 7, 6));
    }
}
