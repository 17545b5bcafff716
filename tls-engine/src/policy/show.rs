//! The effective policy in a readable form (`vhost-tls ctl policy`): what
//! the backend enforces after includes and defaults, written like the
//! policy file so an operator can compare the two.

use std::fmt::{self, Display, Formatter};

use super::{HostPattern, Policy, Rule};
use crate::tls::iana_suite_name;

impl Display for Policy {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(f, "[tls]")?;
        writeln!(f, "min_version = \"{}\"", version_number(self.min_version))?;
        writeln!(f, "max_version = \"{}\"", version_number(self.max_version))?;
        let suites: Vec<String> = self.cipher_suites.iter().map(|s| iana_suite_name(s.suite())).collect();
        writeln!(f, "cipher_suites = {}", quoted_list(&suites))?;
        writeln!(f, "application_identities = {}", self.application_identities)?;
        writeln!(f)?;
        writeln!(f, "[trust]")?;
        writeln!(f, "# {} trust anchors (system roots and ca_files together)", self.roots.len())?;
        writeln!(f)?;
        writeln!(f, "[destinations]")?;
        writeln!(f, "default = \"{}\"", if self.destinations.default_allow { "allow" } else { "deny" })?;
        for rule in &self.destinations.rules {
            writeln!(f)?;
            write!(f, "{rule}")?;
        }
        writeln!(f)?;
        writeln!(f, "[limits]")?;
        writeln!(f, "max_sockets = {}", self.limits.max_sockets)?;
        writeln!(f, "socket_buffer_bytes = {}", self.limits.socket_buffer_bytes)?;
        writeln!(f, "handshake_timeout_secs = {}", self.limits.handshake_timeout_secs)?;
        writeln!(f, "connect_timeout_secs = {}", self.limits.connect_timeout_secs)?;
        writeln!(f, "max_pending_handshakes = {}", self.limits.max_pending_handshakes)?;
        writeln!(f, "handshakes_per_second = {}", self.limits.handshakes_per_second)?;
        writeln!(f, "vm_buffer_mib = {}", self.limits.vm_buffer_mib)?;
        if self.server.listen.is_empty() && self.server.identities.is_empty() {
            writeln!(f)?;
            writeln!(f, "# [server]: none; no guest socket may listen")?;
        }
        for mapping in &self.server.listen {
            writeln!(f)?;
            writeln!(f, "[[server.listen]]")?;
            writeln!(f, "guest_port = {}", mapping.guest_port)?;
            writeln!(f, "host = \"{}\"", mapping.host)?;
        }
        for identity in &self.server.identities {
            writeln!(f)?;
            writeln!(f, "[[server.identities]]")?;
            writeln!(f, "# subject: {}", identity.subject)?;
            writeln!(f, "# names: {}", identity.names.join(", "))?;
        }
        if let Some(roots) = &self.server.client_roots {
            writeln!(f)?;
            writeln!(f, "# [server] client_ca_files: {} trust anchors for client certificates", roots.len())?;
        }
        if let Some(identity) = &self.client.identity {
            writeln!(f)?;
            writeln!(f, "[client]")?;
            writeln!(f, "# subject: {}", identity.subject)?;
        }
        Ok(())
    }
}

impl Display for Rule {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match &self.included_from {
            Some(file) => writeln!(f, "# rule {}, {file}:{}", self.number, self.line)?,
            None => writeln!(f, "# rule {}, line {}", self.number, self.line)?,
        }
        writeln!(f, "[[destinations.rules]]")?;
        writeln!(f, "action = \"{}\"", if self.allow { "allow" } else { "deny" })?;
        if let Some(hosts) = &self.hosts {
            let hosts: Vec<String> = hosts
                .iter()
                .map(|pattern| match pattern {
                    HostPattern::Exact(name) => name.clone(),
                    HostPattern::Subdomains(suffix) => format!("*{suffix}"),
                })
                .collect();
            writeln!(f, "hosts = {}", quoted_list(&hosts))?;
        }
        if let Some(addresses) = &self.addresses {
            let addresses: Vec<String> = addresses.iter().map(ToString::to_string).collect();
            writeln!(f, "addresses = {}", quoted_list(&addresses))?;
        }
        if let Some(ports) = &self.ports {
            let ports: Vec<String> = ports
                .iter()
                .map(|range| match (range.start(), range.end()) {
                    (low, high) if low == high => low.to_string(),
                    (low, high) => format!("\"{low}-{high}\""),
                })
                .collect();
            writeln!(f, "ports = [{}]", ports.join(", "))?;
        }
        Ok(())
    }
}

fn version_number(version: super::TlsVersion) -> &'static str {
    match version {
        super::TlsVersion::Tls12 => "1.2",
        super::TlsVersion::Tls13 => "1.3",
    }
}

fn quoted_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("\"{item}\"")).collect();
    format!("[{}]", quoted.join(", "))
}
