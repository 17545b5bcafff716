use super::*;

fn parse(text: &str) -> Result<Policy, PolicyError> {
    Policy::from_toml_str(text, "p.toml", Path::new("/nonexistent"))
}

/// Asserts that `text` is refused on `line` (`None`: no line) with a message
/// containing `fragment`.
#[track_caller]
fn assert_refused(text: &str, line: Option<usize>, fragment: &str) {
    let error = parse(text).expect_err(text);
    assert_eq!(error.line, line, "{text:?}: {error}");
    assert!(error.message.contains(fragment), "{text:?}: {error}");
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn destinations(text: &str) -> DestinationPolicy {
    parse(text).unwrap_or_else(|e| panic!("{e}")).destinations
}

#[track_caller]
fn assert_denied(verdict: Verdict, reason: &str) {
    match verdict {
        Verdict::Deny(why) => assert!(why.contains(reason), "denied, but for {why:?} rather than {reason:?}"),
        Verdict::Allow => panic!("allowed; expected a denial for {reason:?}"),
    }
}

// --- versions ---------------------------------------------------------------

#[test]
fn versions_map_to_ssa_wire_values_and_rustls() {
    assert_eq!(TlsVersion::Tls12.wire_value(), 2);
    assert_eq!(TlsVersion::Tls13.wire_value(), 3);
    for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
        assert_eq!(TlsVersion::from_wire(version.wire_value()), Some(version));
    }
    for bad in [0, 1, 4, u32::MAX] {
        assert_eq!(TlsVersion::from_wire(bad), None);
    }
    assert!(TlsVersion::Tls12 < TlsVersion::Tls13);
    assert_eq!(TlsVersion::Tls12.rustls().version, rustls::ProtocolVersion::TLSv1_2);
    assert_eq!(TlsVersion::Tls13.rustls().version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(TlsVersion::Tls12.to_string(), "TLSv1.2");
    assert_eq!(TlsVersion::Tls13.to_string(), "TLSv1.3");
}

#[test]
fn version_spellings() {
    for (text, version) in
        [("1.2", TlsVersion::Tls12), ("TLSv1.3", TlsVersion::Tls13), ("tls1.2", TlsVersion::Tls12), (" 1.3 ", TlsVersion::Tls13)]
    {
        assert_eq!(TlsVersion::parse(text), Some(version), "{text}");
    }
    for text in ["", "1.1", "1.20", "tlsvtlsv1.2", "TLSv1.2.0", "SSLv3", "13"] {
        assert_eq!(TlsVersion::parse(text), None, "{text}");
    }
    let policy = parse("[tls]\nmin_version = \"1.3\"\nmax_version = \"1.3\"\n").unwrap();
    assert_eq!((policy.min_version, policy.max_version), (TlsVersion::Tls13, TlsVersion::Tls13));
}

// --- defaults -----------------------------------------------------------------

#[test]
fn an_empty_policy_is_the_builtin_default() {
    let policy = parse("").unwrap();
    let builtin = Policy::builtin_default();
    assert_eq!((policy.min_version, policy.max_version), (TlsVersion::Tls12, TlsVersion::Tls13));
    assert_eq!((builtin.min_version, builtin.max_version), (TlsVersion::Tls12, TlsVersion::Tls13));
    assert_eq!(policy.cipher_suites, rustls::crypto::ring::ALL_CIPHER_SUITES);
    assert_eq!(builtin.cipher_suites, rustls::crypto::ring::ALL_CIPHER_SUITES);
    assert_eq!(policy.limits, Limits::default());
    assert_eq!(
        policy.limits,
        Limits {
            max_sockets: 1024,
            socket_buffer_bytes: 262144,
            handshake_timeout_secs: 30,
            connect_timeout_secs: 30,
            max_pending_handshakes: 256,
            handshakes_per_second: 1000,
            vm_buffer_mib: 272,
        }
    );
    assert!(!policy.roots.is_empty(), "system roots, or webpki-roots without them");
    assert_eq!(policy.roots.len(), builtin.roots.len());
    assert_eq!(policy.destinations, DestinationPolicy::default());
    assert_eq!(builtin.destinations, DestinationPolicy::default());
    // Comments and empty sections are fine.
    parse("# nothing\n[tls]\n[trust]\n[destinations]\n[limits]\n").unwrap();
}

#[test]
fn the_builtin_destinations_allow_remote_and_deny_host_local() {
    let d = Policy::builtin_default().destinations;
    assert_eq!(d.check(Some("example.com"), ip("93.184.215.14"), 443), Verdict::Allow);
    assert_eq!(d.check(None, ip("2001:db8::1"), 443), Verdict::Allow);
    assert_denied(d.check(None, ip("127.0.0.1"), 443), "a host-local address (loopback, link-local or one of the host's own) is denied unless a rule allows it by address");
}

// --- errors and their lines -----------------------------------------------------

#[test]
fn error_display_names_origin_and_line() {
    let with_line = PolicyError { origin: "vm1.toml".into(), line: Some(7), message: "bad".into() };
    assert_eq!(with_line.to_string(), "vm1.toml:7: bad");
    let without = PolicyError { origin: "vm1.toml".into(), line: None, message: "bad".into() };
    assert_eq!(without.to_string(), "vm1.toml: bad");
    let error = parse("[limits]\nmax_sockets = -1\n").unwrap_err();
    assert_eq!(error.to_string(), "p.toml:2: max_sockets = -1 is outside 1..=65536");
}

#[test]
fn syntax_and_schema_errors_name_their_line() {
    assert_refused("[tls\n", Some(1), "");
    assert_refused("[tls]\nmin_version = \"1.2\"\nmin_version = \"1.3\"\n", Some(3), "duplicate key");
    assert_refused("colour = \"blue\"\n", Some(1), "unknown field `colour`");
    assert_refused("[tls]\n\nminimum = \"1.2\"\n", Some(3), "unknown field `minimum`");
    assert_refused("[trust]\nsystem_root = true\n", Some(2), "unknown field `system_root`");
    assert_refused("[destinations]\ndefualt = \"deny\"\n", Some(2), "unknown field `defualt`");
    assert_refused("[limits]\nmax_socket = 1\n", Some(2), "unknown field `max_socket`");
    assert_refused(
        "[[destinations.rules]]\naction = \"allow\"\nports = [1]\n\n[[destinations.rules]]\naction = \"allow\"\nport = [1]\n",
        Some(7),
        "unknown field `port`",
    );
    assert_refused("[[destinations.rules]]\nhosts = [\"a.test\"]\n", Some(1), "missing field `action`");
    assert_refused("[trust]\nsystem_roots = \"yes\"\n", Some(2), "expected a boolean");
    assert_refused("[[destinations.rules]]\naction = \"allow\"\nhosts = \"a.test\"\n", Some(3), "expected a sequence");
    assert_refused("[limits]\nmax_sockets = \"10\"\n", Some(2), "invalid type");
}

#[test]
fn version_errors_name_their_line() {
    assert_refused("[tls]\nmin_version = \"1.1\"\n", Some(2), "unknown TLS version \"1.1\": use \"1.2\" or \"1.3\"");
    assert_refused("[tls]\nmax_version = \"1.4\"\n", Some(2), "unknown TLS version \"1.4\"");
    assert_refused("[tls]\nmin_version = 1.2\n", Some(2), "expected a TLS version as a string: \"1.2\" or \"1.3\"");
    assert_refused("[tls]\nmin_version = \"1.3\"\nmax_version = \"1.2\"\n", Some(2), "min_version TLSv1.3 is above max_version TLSv1.2");
    // Only max written: the line is max_version's.
    assert_refused("[tls]\n\nmax_version = \"1.2\"\nmin_version = \"1.3\"\n", Some(4), "above max_version");
}

#[test]
fn cipher_suite_errors_name_their_line() {
    let error = parse("[tls]\n\ncipher_suites = [\n  \"TLS_AES_128_GCM_SHA256\",\n  \"FOO\",\n]\n").unwrap_err();
    assert_eq!(error.line, Some(5), "{error}");
    assert!(error.message.starts_with("unknown cipher suite \"FOO\"; known: TLS_"), "{error}");
    assert!(error.message.contains("TLS_AES_256_GCM_SHA384"), "the known list names them: {error}");
    assert!(error.message.contains("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"), "{error}");
    assert_refused("[tls]\ncipher_suites = []\n", Some(2), "cipher_suites is empty");
    assert_refused(
        "[tls]\nmin_version = \"1.3\"\ncipher_suites = [\"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\"]\n",
        Some(3),
        "no suite for TLSv1.3",
    );
    assert_refused("[tls]\ncipher_suites = [\"TLS_AES_128_GCM_SHA256\"]\n", Some(2), "no suite for TLSv1.2");
}

#[test]
fn destination_errors_name_their_line() {
    assert_refused("[destinations]\ndefault = \"maybe\"\n", Some(2), "unknown action \"maybe\": use \"allow\" or \"deny\"");
    assert_refused("[[destinations.rules]]\naction = \"permit\"\nports = [1]\n", Some(2), "unknown action \"permit\"");
    // A rule without criteria is reported at its header.
    assert_refused(
        "[destinations]\n\n[[destinations.rules]]\naction = \"allow\"\n",
        Some(3),
        "needs at least one of hosts, addresses, ports",
    );
    assert_refused("[destinations]\nrules = [\n  { action = \"allow\" },\n]\n", Some(3), "needs at least one of");
    for key in ["hosts", "addresses", "ports"] {
        assert_refused(&format!("[[destinations.rules]]\naction = \"deny\"\n{key} = []\n"), Some(3), &format!("{key} is empty"));
    }
    // Addresses.
    for bad in ["10.0.0.0/33", "10.0.0", "::1/129", "example.com", "10.0.0.0/8/8", ""] {
        assert_refused(
            &format!("[[destinations.rules]]\naction = \"allow\"\naddresses = [\n\"10.0.0.0/8\",\n\"{bad}\"]\n"),
            Some(5),
            "is not an IP address or CIDR range",
        );
    }
    // Ports.
    for bad in ["0", "65536", "-1", "true", "\"\"", "\"http\"", "\"1-\"", "\"-5\"", "\"1-70000\"", "\"1-2-3\"", "1.5"] {
        let text = format!("[[destinations.rules]]\naction = \"allow\"\nports = [443,\n{bad}]\n");
        let error = parse(&text).expect_err(&text);
        assert_eq!(error.line, Some(4), "{text:?}: {error}");
        assert!(error.message.contains("port"), "{text:?}: {error}");
    }
    assert_refused("[[destinations.rules]]\naction = \"allow\"\nports = [\"9-1\"]\n", Some(3), "port range \"9-1\" is backwards");
    assert_refused(
        "[[destinations.rules]]\naction = \"allow\"\nports = [true]\n",
        Some(3),
        "expected a port number or a \"low-high\" range",
    );
    // Hosts.
    for bad in ["bad name", "*", "*.", "a.*.test", "**.test", "-a.test", "a..test", "10.0.0", "*.1"] {
        assert_refused(
            &format!("[[destinations.rules]]\naction = \"allow\"\nhosts = [\"ok.test\",\n\"{bad}\"]\n"),
            Some(4),
            "is not a host name or \"*.domain\" pattern",
        );
    }
    for literal in ["192.0.2.1", "::1", "[::1]", "192.0.2.1."] {
        assert_refused(
            &format!("[[destinations.rules]]\naction = \"allow\"\nhosts = [\"{literal}\"]\n"),
            Some(3),
            "is an IP address: hosts match names only",
        );
    }
    assert_refused("[[destinations.rules]]\naction = \"allow\"\nhosts = [\"bücher.test\"]\n", Some(3), "xn-- (punycode)");
}

#[test]
fn limit_errors_name_their_line() {
    let cases: [(&str, i64, i64); 7] = [
        ("max_sockets", 1, 65536),
        ("socket_buffer_bytes", 4096, 16 << 20),
        ("handshake_timeout_secs", 1, 3600),
        ("connect_timeout_secs", 1, 3600),
        ("max_pending_handshakes", 1, 65536),
        ("handshakes_per_second", 1, 1_000_000),
        ("vm_buffer_mib", 1, 65536),
    ];
    for (key, low, high) in cases {
        for bad in [low - 1, high + 1, -1, i64::from(u32::MAX) + 1] {
            assert_refused(&format!("[limits]\n\n{key} = {bad}\n"), Some(3), &format!("{key} = {bad} is outside {low}..={high}"));
        }
        for good in [low, high] {
            parse(&format!("[limits]\n{key} = {good}\n")).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let limits = parse(
        "[limits]\nmax_sockets = 8\nsocket_buffer_bytes = 4096\nhandshake_timeout_secs = 5\nconnect_timeout_secs = 7\n\
         max_pending_handshakes = 3\nhandshakes_per_second = 9\nvm_buffer_mib = 2\n",
    )
    .unwrap()
    .limits;
    assert_eq!(
        limits,
        Limits {
            max_sockets: 8,
            socket_buffer_bytes: 4096,
            handshake_timeout_secs: 5,
            connect_timeout_secs: 7,
            max_pending_handshakes: 3,
            handshakes_per_second: 9,
            vm_buffer_mib: 2,
        }
    );
    assert!(limits.buffers_fit(512) && !limits.buffers_fit(513), "2 MiB hold 512 buffers of 4 KiB");
}

#[test]
fn no_trust_anchors_names_the_system_roots_line() {
    assert_refused("[trust]\n\nsystem_roots = false\n", Some(3), "no trust anchors: system_roots is false and ca_files names no file");
    assert_refused("[trust]\nsystem_roots = false\nca_files = []\n", Some(2), "no trust anchors");
}

#[test]
fn line_numbers_count_lines_not_characters() {
    // Multi-byte characters before the error must not shift or break it.
    assert_refused("# Politique « stricte » ☕\n[limits]\n# ünïcödé\nmax_sockets = 0\n", Some(4), "max_sockets = 0");
    assert_refused("[tls]\r\nmin_version = \"1.3\"\r\nmax_version = \"1.2\"\r\n", Some(2), "above max_version");
    let files = [include::SourceFile::single("x", "é\nb")];
    let source = Source { files: &files, resolved: RefCell::new(Vec::new()) };
    assert_eq!(source.line_of(1), 1, "inside a multi-byte character");
    assert_eq!(source.line_of(3), 2);
    assert_eq!(source.line_of(100), 2, "past the end");
}

// --- trust anchors --------------------------------------------------------------

fn self_signed_pem(name: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

#[test]
fn ca_files_load_relative_to_the_base_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), self_signed_pem("ca-one.test")).unwrap();
    let bundle = format!("# a comment outside PEM blocks\n{}{}", self_signed_pem("ca-two.test"), self_signed_pem("ca-three.test"));
    std::fs::create_dir(dir.path().join("more")).unwrap();
    std::fs::write(dir.path().join("more/bundle.pem"), bundle).unwrap();

    let text = "[trust]\nsystem_roots = false\nca_files = [\"ca.pem\", \"more/bundle.pem\"]\n";
    let policy = Policy::from_toml_str(text, "p", dir.path()).unwrap();
    assert_eq!(policy.roots.len(), 3);

    // Absolute paths are taken as they are.
    let absolute = dir.path().join("ca.pem");
    let text = format!("[trust]\nsystem_roots = false\nca_files = [{:?}]\n", absolute.display().to_string());
    assert_eq!(Policy::from_toml_str(&text, "p", Path::new("/nonexistent")).unwrap().roots.len(), 1);

    // With system roots, the files come on top.
    let system = Policy::builtin_default().roots.len();
    let policy = Policy::from_toml_str("[trust]\nca_files = [\"ca.pem\"]\n", "p", dir.path()).unwrap();
    assert_eq!(policy.roots.len(), system + 1);
}

#[test]
fn bad_ca_files_name_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, contents: &[u8]| std::fs::write(dir.path().join(name), contents).unwrap();
    write("good.pem", self_signed_pem("good.test").as_bytes());
    write("empty.pem", b"");
    write("text.pem", b"nothing to see here\n");
    write("key.pem", rcgen::KeyPair::generate().unwrap().serialize_pem().as_bytes());
    write("der.crt", &[0x30, 0x82, 0x01, 0x0a, 0x02, 0x82]);
    write("bad-base64.pem", b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
    write("not-a-cert.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    std::fs::create_dir(dir.path().join("a-directory")).unwrap();

    let cases = [
        ("missing.pem", "cannot read CA file"),
        ("a-directory", "cannot read CA file"),
        ("empty.pem", "holds no PEM certificate"),
        ("text.pem", "holds no PEM certificate"),
        ("key.pem", "holds no PEM certificate"),
        ("der.crt", "holds no PEM certificate"),
        ("bad-base64.pem", "bad PEM in CA file"),
        ("not-a-cert.pem", "bad certificate in CA file"),
    ];
    for (file, fragment) in cases {
        let text = format!("[trust]\nsystem_roots = false\nca_files = [\n  \"good.pem\",\n  \"{file}\",\n]\n");
        let error = Policy::from_toml_str(&text, "p.toml", dir.path()).expect_err(file);
        assert_eq!(error.line, Some(5), "{file}: {error}");
        assert!(error.message.contains(fragment), "{file}: {error}");
        assert!(error.message.contains(&dir.path().join(file).display().to_string()), "names the resolved path: {error}");
    }
}

#[test]
fn load_reads_the_file_and_resolves_ca_files_next_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let vm_dir = dir.path().join("vm1");
    std::fs::create_dir(&vm_dir).unwrap();
    std::fs::write(vm_dir.join("ca.pem"), self_signed_pem("ca.test")).unwrap();
    let path = vm_dir.join("policy.toml");
    std::fs::write(&path, "[trust]\nsystem_roots = false\nca_files = [\"ca.pem\"]\n").unwrap();
    assert_eq!(Policy::load(&path).unwrap().roots.len(), 1);

    std::fs::write(&path, "[trust]\nsystem_roots = false\nca_files = [\"elsewhere.pem\"]\n").unwrap();
    let error = Policy::load(&path).unwrap_err();
    assert_eq!(error.origin, path.display().to_string());
    assert!(error.to_string().starts_with(&format!("{}:3: cannot read CA file", path.display())), "{error}");

    let missing = dir.path().join("missing.toml");
    let error = Policy::load(&missing).unwrap_err();
    assert_eq!(error.line, None);
    assert!(error.to_string().starts_with(&format!("{}: cannot read the policy", missing.display())), "{error}");
}

// --- cipher suites ------------------------------------------------------------

fn suite_names(policy: &Policy) -> Vec<String> {
    policy.cipher_suites.iter().map(|s| iana_suite_name(s.suite())).collect()
}

#[test]
fn cipher_suites_accept_rustls_and_iana_names_in_any_case() {
    let policy = parse(
        "[tls]\ncipher_suites = [\"tls13_aes_128_gcm_sha256\", \"TLS_AES_256_GCM_SHA384\", \"tls_ecdhe_ecdsa_with_aes_128_gcm_sha256\"]\n",
    )
    .unwrap();
    assert_eq!(suite_names(&policy), ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]);
    // Every suite rustls knows is reachable by both of its names.
    for suite in rustls::crypto::ring::ALL_CIPHER_SUITES {
        let rustls_name = suite.suite().as_str().unwrap();
        assert_eq!(find_suite(rustls_name), Some(*suite));
        assert_eq!(find_suite(&iana_suite_name(suite.suite())), Some(*suite));
    }
}

#[test]
fn cipher_suites_keep_their_order_without_duplicates() {
    let policy = parse(
        "[tls]\ncipher_suites = [\"TLS_CHACHA20_POLY1305_SHA256\", \"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\", \"TLS13_CHACHA20_POLY1305_SHA256\", \"TLS_AES_128_GCM_SHA256\"]\n",
    )
    .unwrap();
    let expected = ["TLS_CHACHA20_POLY1305_SHA256", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"];
    assert_eq!(suite_names(&policy), expected);
    let provider = policy.crypto_provider();
    let provided: Vec<String> = provider.cipher_suites.iter().map(|s| iana_suite_name(s.suite())).collect();
    assert_eq!(provided, expected, "the provider offers the policy's suites, in order");
    assert!(!provider.kx_groups.is_empty(), "the rest of the ring provider is kept");
}

#[test]
fn tls13_only_policies_need_only_tls13_suites() {
    let policy = parse("[tls]\nmin_version = \"1.3\"\ncipher_suites = [\"TLS_AES_256_GCM_SHA384\"]\n").unwrap();
    assert_eq!(suite_names(&policy), ["TLS_AES_256_GCM_SHA384"]);
    let policy = parse("[tls]\nmax_version = \"1.2\"\ncipher_suites = [\"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\"]\n").unwrap();
    assert_eq!(policy.max_version, TlsVersion::Tls12);
}

// --- destinations -------------------------------------------------------------

const ORDERED_RULES: &str = r#"
[destinations]
default = "deny"
[[destinations.rules]]
action = "deny"
hosts = ["blocked.example.com"]
[[destinations.rules]]
action = "allow"
hosts = ["*.example.com", "Example.ORG."]
ports = [443, "8000-8100"]
[[destinations.rules]]
action = "allow"
addresses = ["192.0.2.0/24", "::1", "2001:db8::/32"]
"#;

#[test]
fn the_first_matching_rule_decides() {
    let d = destinations(ORDERED_RULES);
    let public = ip("203.0.113.7");
    assert_denied(d.check(Some("blocked.example.com"), public, 443), "denied by destinations rule 1 (line 4)");
    assert_eq!(d.check(Some("www.example.com"), public, 443), Verdict::Allow);
    // The deny rule comes first even where a later rule would allow.
    assert_denied(d.check(Some("blocked.example.com"), ip("192.0.2.1"), 443), "rule 1 (line 4)");
    // Swapping the rules swaps the outcome.
    let swapped = destinations(
        "[destinations]\ndefault = \"deny\"\n[[destinations.rules]]\naction = \"allow\"\nhosts = [\"*.example.com\"]\n[[destinations.rules]]\naction = \"deny\"\nhosts = [\"blocked.example.com\"]\n",
    );
    assert_eq!(swapped.check(Some("blocked.example.com"), public, 443), Verdict::Allow);
}

#[test]
fn the_default_decides_when_no_rule_matches() {
    let public = ip("198.51.100.1");
    assert_denied(destinations(ORDERED_RULES).check(None, public, 1), "no destinations rule allows it and the default is deny");
    let allow = "[destinations]\ndefault = \"allow\"\n[[destinations.rules]]\naction = \"deny\"\nports = [25]\n";
    assert_eq!(destinations(allow).check(None, public, 443), Verdict::Allow);
    assert_denied(destinations(allow).check(None, public, 25), "denied by destinations rule 1 (line 3)");
    assert_eq!(destinations("[destinations]\n").check(None, public, 1), Verdict::Allow, "the default default is allow");
}

#[test]
fn every_criterion_of_a_rule_must_match() {
    let d = destinations(
        "[destinations]\ndefault = \"deny\"\n[[destinations.rules]]\naction = \"allow\"\nhosts = [\"api.test\"]\naddresses = [\"192.0.2.0/24\"]\nports = [443]\n",
    );
    assert_eq!(d.check(Some("api.test"), ip("192.0.2.5"), 443), Verdict::Allow);
    assert_denied(d.check(Some("other.test"), ip("192.0.2.5"), 443), "default is deny");
    assert_denied(d.check(Some("api.test"), ip("198.51.100.5"), 443), "default is deny");
    assert_denied(d.check(Some("api.test"), ip("192.0.2.5"), 444), "default is deny");
}

#[test]
fn host_names_match_case_insensitively_without_a_trailing_dot() {
    let d = destinations(ORDERED_RULES);
    let public = ip("203.0.113.7");
    for name in ["www.example.com", "WWW.Example.COM", "www.example.com.", "a.b.c.example.com", "example.org", "EXAMPLE.org."] {
        assert_eq!(d.check(Some(name), public, 443), Verdict::Allow, "{name}");
    }
    assert_denied(d.check(Some("BLOCKED.example.com."), public, 443), "rule 1");
    // "*." needs at least one label, and a whole label.
    for name in ["example.com", "example.com.", "badexample.com", "www.example.com.evil.test", "www.example.org", ".example.com"] {
        assert_denied(d.check(Some(name), public, 443), "default is deny");
    }
}

#[test]
fn host_rules_never_match_ip_literal_connects() {
    let d = destinations("[destinations]\ndefault = \"deny\"\n[[destinations.rules]]\naction = \"allow\"\nhosts = [\"*.example.com\"]\n");
    let public = ip("203.0.113.7");
    assert_denied(d.check(None, public, 443), "default is deny");
    // A program that "connects by name" to an IP literal is still connecting to an address.
    for literal in ["203.0.113.7", "::1", "[2001:db8::1]", "203.0.113.7.", ""] {
        assert_denied(d.check(Some(literal), public, 443), "default is deny");
    }
    // Deny rules by name do not catch address connects either: they need the address.
    let deny = destinations("[[destinations.rules]]\naction = \"deny\"\nhosts = [\"*.example.com\"]\n");
    assert_eq!(deny.check(Some("203.0.113.7"), public, 443), Verdict::Allow);
}

#[test]
fn ports_match_single_values_and_inclusive_ranges() {
    let d = destinations("[destinations]\ndefault = \"deny\"\n[[destinations.rules]]\naction = \"allow\"\nports = [443, \"8443\", \"8000 - 8100\", \"65535\", \"1-1\"]\n");
    let public = ip("203.0.113.7");
    for port in [1, 443, 8443, 8000, 8050, 8100, 65535] {
        assert_eq!(d.check(None, public, port), Verdict::Allow, "{port}");
    }
    for port in [0, 2, 442, 444, 7999, 8101, 8442, 65534] {
        assert_denied(d.check(None, public, port), "default is deny");
    }
}

#[test]
fn addresses_match_ipv4_and_ipv6_ranges() {
    let d = destinations(ORDERED_RULES);
    for allowed in ["192.0.2.0", "192.0.2.255", "::1", "2001:db8::5", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"] {
        assert_eq!(d.check(None, ip(allowed), 1), Verdict::Allow, "{allowed}");
    }
    for denied in ["192.0.3.0", "192.0.1.255", "2001:db9::1", "2001:db7:ffff::1", "::2"] {
        assert_denied(d.check(None, ip(denied), 1), "default is deny");
    }
    // Host bits in a CIDR are ignored, as ip(8) does.
    let d = destinations("[destinations]\ndefault = \"deny\"\n[[destinations.rules]]\naction = \"allow\"\naddresses = [\"10.1.2.3/8\", \" 2001:db8::1/64 \"]\n");
    assert_eq!(d.check(None, ip("10.200.0.1"), 1), Verdict::Allow);
    assert_eq!(d.check(None, ip("2001:db8::ffff"), 1), Verdict::Allow);
    assert_denied(d.check(None, ip("2001:db8:0:1::1"), 1), "default is deny");
}

#[test]
fn ipv4_mapped_addresses_are_their_ipv4_address() {
    // Connections to mapped addresses match IPv4 rules...
    let d = destinations(ORDERED_RULES);
    assert_eq!(d.check(None, ip("::ffff:192.0.2.9"), 1), Verdict::Allow);
    assert_denied(d.check(None, ip("::ffff:192.0.3.9"), 1), "default is deny");
    // ...and rules written in the mapped form match IPv4 connections.
    let d = destinations("[destinations]\ndefault = \"deny\"\n[[destinations.rules]]\naction = \"allow\"\naddresses = [\"::ffff:10.0.0.0/104\", \"::ffff:192.0.2.7\"]\n");
    assert_eq!(d.check(None, ip("10.9.9.9"), 1), Verdict::Allow);
    assert_eq!(d.check(None, ip("::ffff:10.9.9.9"), 1), Verdict::Allow);
    assert_eq!(d.check(None, ip("192.0.2.7"), 1), Verdict::Allow);
    assert_denied(d.check(None, ip("11.0.0.1"), 1), "default is deny");
    // A deny of an IPv4 range cannot be dodged through the mapped form.
    let d = destinations("[[destinations.rules]]\naction = \"deny\"\naddresses = [\"198.51.100.0/24\"]\n");
    assert_denied(d.check(None, ip("::ffff:198.51.100.1"), 443), "rule 1 (line 1)");
}

#[test]
fn host_local_addresses_are_denied_unless_a_rule_allows_them() {
    let d = destinations("[destinations]\ndefault = \"allow\"\n");
    let local = [
        "127.0.0.1",
        "127.255.255.254",
        "0.0.0.0",
        "0.1.2.3",
        "169.254.0.1",
        "169.254.169.254",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:0.0.0.0",
        "::ffff:169.254.1.1",
        "fe80::1",
        "febf:ffff::1",
    ];
    for addr in local {
        assert_denied(d.check(Some("localhost"), ip(addr), 443), "host-local address");
    }
    assert_denied(d.check(None, ip("::ffff:127.0.0.1"), 443), "a host-local address (loopback, link-local or one of the host's own) is denied unless a rule allows it by address");
    for remote in ["198.51.100.1", "1.0.0.1", "126.255.255.255", "128.0.0.1", "169.253.0.1", "fec0::1", "fe7f::1", "2001:db8::1", "::2"] {
        assert_eq!(d.check(None, ip(remote), 443), Verdict::Allow, "{remote}");
    }

    // A rule can allow them, precisely.
    let allowed = destinations(
        "[destinations]\ndefault = \"deny\"\n[[destinations.rules]]\naction = \"allow\"\naddresses = [\"127.0.0.0/8\", \"::1\"]\nports = [\"8443\"]\n",
    );
    assert_eq!(allowed.check(Some("localhost"), ip("127.0.0.1"), 8443), Verdict::Allow);
    assert_eq!(allowed.check(None, ip("::ffff:127.0.0.1"), 8443), Verdict::Allow);
    assert_eq!(allowed.check(None, ip("::1"), 8443), Verdict::Allow);
    assert_denied(allowed.check(None, ip("127.0.0.1"), 8444), "host-local");
    assert_denied(allowed.check(None, ip("169.254.169.254"), 8443), "host-local");
    // A rule by name (or port) alone never does: a name resolves wherever
    // its owner (or the guest's DNS answers) say, the host's metadata
    // service or loopback included.
    let by_name = destinations(
        "[destinations]\ndefault = \"deny\"\n[[destinations.rules]]\naction = \"allow\"\nhosts = [\"localhost\", \"metadata.test\"]\n\
         [[destinations.rules]]\naction = \"allow\"\nports = [8443]\n",
    );
    assert_denied(by_name.check(Some("localhost"), ip("127.0.0.1"), 443), "host-local");
    assert_denied(by_name.check(Some("metadata.test"), ip("169.254.169.254"), 80), "host-local");
    assert_denied(by_name.check(Some("localhost"), ip("::1"), 8443), "host-local");
    assert_denied(by_name.check(None, ip("127.0.0.1"), 443), "host-local");
    assert_eq!(by_name.check(Some("metadata.test"), ip("198.51.100.1"), 443), Verdict::Allow);
    // Name and address together: the address is explicit.
    let both = destinations(
        "[destinations]\ndefault = \"deny\"\n[[destinations.rules]]\naction = \"allow\"\nhosts = [\"localhost\"]\naddresses = [\"127.0.0.1\"]\n",
    );
    assert_eq!(both.check(Some("localhost"), ip("127.0.0.1"), 443), Verdict::Allow);
    assert_denied(both.check(None, ip("127.0.0.1"), 443), "host-local");
    // An explicit deny rule names itself rather than the host-local default.
    let deny = destinations("[[destinations.rules]]\naction = \"deny\"\nports = [443]\n");
    assert_denied(deny.check(None, ip("127.0.0.1"), 443), "denied by destinations rule 1 (line 1)");
}

#[test]
fn the_hosts_own_interface_addresses_are_host_local() {
    let interfaces = [ip("192.0.2.2"), ip("fd00::2"), ip("10.1.2.3")];
    let check = |d: &DestinationPolicy, addr: &str, port: u16| d.verdict(&Names::of(Some("host.test"), None), ip(addr), port, &interfaces);
    let d = destinations("[destinations]\ndefault = \"allow\"\n[[destinations.rules]]\naction = \"allow\"\nhosts = [\"host.test\"]\n");
    for own in ["192.0.2.2", "::ffff:192.0.2.2", "fd00::2", "10.1.2.3"] {
        assert_denied(check(&d, own, 443), "host-local");
    }
    for other in ["192.0.2.3", "fd00::3", "10.1.2.4"] {
        assert_eq!(check(&d, other, 443), Verdict::Allow, "{other}");
    }
    // An address rule opens them.
    let allowed = destinations("[[destinations.rules]]\naction = \"allow\"\naddresses = [\"192.0.2.2\"]\n");
    assert_eq!(check(&allowed, "192.0.2.2", 443), Verdict::Allow);
    assert_denied(check(&allowed, "10.1.2.3", 443), "host-local");
    // The real list is read from the host's interfaces: loopback at least.
    let read = crate::host_addresses::read().expect("getifaddrs");
    assert!(read.contains(&ip("127.0.0.1")), "{read:?}");
    assert!(crate::host_addresses::current().contains(&ip("127.0.0.1")));
}

#[test]
fn names_no_rule_could_allow_are_refused_before_resolving() {
    let d = destinations(
        r#"[destinations]
default = "deny"
[[destinations.rules]]
action = "deny"
hosts = ["blocked.example.com"]
[[destinations.rules]]
action = "deny"
addresses = ["10.0.0.0/8"]
[[destinations.rules]]
action = "allow"
hosts = ["*.example.com"]
ports = [443]
"#,
    );
    assert_denied(d.check_name("probe.invalid", None, 443), "no destinations rule allows it and the default is deny");
    assert_denied(d.check_name("blocked.example.com", None, 443), "denied by destinations rule 1 (line 3)");
    assert_denied(d.check_name("www.example.com", None, 80), "default is deny");
    assert_denied(d.check_name("www.example.com", Some("evil.test"), 443), "default is deny");
    // Could resolve to an allowed address: resolve, then check each.
    assert_eq!(d.check_name("www.example.com", None, 443), Verdict::Allow);
    // An address rule can allow any name, an address deny rule not deny all.
    let by_address = destinations("[destinations]\ndefault = \"deny\"\n[[destinations.rules]]\naction = \"allow\"\naddresses = [\"192.0.2.0/24\"]\n");
    assert_eq!(by_address.check_name("probe.invalid", None, 443), Verdict::Allow);
    let default_allow = destinations("[destinations]\ndefault = \"allow\"\n[[destinations.rules]]\naction = \"deny\"\naddresses = [\"0.0.0.0/0\"]\n");
    assert_eq!(default_allow.check_name("probe.invalid", None, 443), Verdict::Allow);
    // A deny rule by port alone decides for every address.
    let port_denied = destinations("[[destinations.rules]]\naction = \"deny\"\nports = [25]\n");
    assert_denied(port_denied.check_name("mail.test", None, 25), "rule 1 (line 1)");
}

#[test]
fn a_claimed_server_name_cannot_dodge_a_deny_rule_or_borrow_an_allow_rule() {
    let d = destinations(
        r#"[destinations]
default = "deny"
[[destinations.rules]]
action = "deny"
hosts = ["blocked.example.com"]
[[destinations.rules]]
action = "allow"
hosts = ["*.example.com"]
[[destinations.rules]]
action = "allow"
ports = [8443]
"#,
    );
    let public = ip("203.0.113.7");
    // By address, claiming a denied name: denied by that name's rule.
    assert_denied(d.check_with_server_name(None, Some("blocked.example.com"), public, 8443), "rule 1 (line 3)");
    assert_denied(d.check_with_server_name(Some("www.example.com"), Some("BLOCKED.example.com."), public, 443), "rule 1");
    // By address, claiming an allowed name: the address was not resolved from it.
    assert_denied(d.check_with_server_name(None, Some("www.example.com"), public, 443), "default is deny");
    // Resolved and verified names must both be allowed.
    assert_eq!(d.check_with_server_name(Some("www.example.com"), Some("api.example.com"), public, 443), Verdict::Allow);
    assert_denied(d.check_with_server_name(Some("www.example.com"), Some("evil.test"), public, 443), "default is deny");
    // An IP-literal server name is no name.
    assert_eq!(d.check_with_server_name(Some("www.example.com"), Some("203.0.113.7"), public, 443), Verdict::Allow);
    // Rules without hosts are unaffected by names.
    assert_eq!(d.check_with_server_name(None, Some("evil.test"), public, 8443), Verdict::Allow);
    // check() is check_with_server_name() without a server name.
    assert_eq!(d.check(Some("www.example.com"), public, 443), d.check_with_server_name(Some("www.example.com"), None, public, 443));
}

#[test]
fn verdicts() {
    assert!(Verdict::Allow.is_allow());
    assert!(!Verdict::Deny("no".into()).is_allow());
}

// --- the example policy -------------------------------------------------------

#[test]
fn the_example_policy_is_valid_and_means_what_it_says() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vhost-tls");
    let path = dir.join("policy-example.toml");
    let policy = Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((policy.min_version, policy.max_version), (TlsVersion::Tls12, TlsVersion::Tls13));
    assert_eq!(policy.limits, Limits::default());
    let d = &policy.destinations;
    assert_denied(d.check(None, ip("10.1.2.3"), 443), "rule 1");
    assert_denied(d.check(None, ip("fd12::1"), 443), "rule 1");
    assert_eq!(d.check(Some("www.example.com"), ip("203.0.113.7"), 8443), Verdict::Allow);
    assert_eq!(d.check(None, ip("203.0.113.7"), 443), Verdict::Allow, "default allow");
    assert_denied(d.check(None, ip("127.0.0.1"), 443), "host-local");
}

// --- server -----------------------------------------------------------------------

/// A leaf for `names` with its key, as PEM (self-signed: the policy only
/// checks that key and certificate belong together).
fn leaf_pem(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

#[test]
fn server_identities_are_chosen_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (file, names) in [("www", &["www.example.test", "example.test"][..]), ("wild", &["*.api.test"][..])] {
        let (cert, key) = leaf_pem(names);
        std::fs::write(dir.path().join(format!("{file}.pem")), cert).unwrap();
        std::fs::write(dir.path().join(format!("{file}.key")), key).unwrap();
    }
    let text = r#"
[[server.listen]]
guest_port = 443
host = "127.0.0.1:8443"

[[server.listen]]
guest_port = 8443
host = "[::1]:9443"

[[server.identities]]
certificate_chain = "www.pem"
private_key = "www.key"

[[server.identities]]
certificate_chain = "wild.pem"
private_key = "wild.key"
"#;
    let server = Policy::from_toml_str(text, "p", dir.path()).unwrap().server;
    assert_eq!(server.mapping(443).unwrap().host, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(server.mapping(8443).unwrap().host, "[::1]:9443".parse().unwrap());
    assert!(server.mapping(80).is_none());
    // bind(): the mapping, or EACCES with the reason for TLS_ERROR.
    assert_eq!(server.mapping_for_bind(443).unwrap().host, "127.0.0.1:8443".parse().unwrap());
    let refused = server.mapping_for_bind(80).unwrap_err();
    assert_eq!(refused.errno, crate::errno::Errno::EACCES);
    assert!(refused.reason.contains("port 80 ([[server.listen]])"), "{}", refused.reason);
    assert!(server.mapping_for_bind(0).unwrap_err().reason.contains("fixed ports only"));
    let names_of = |sni: Option<&str>| server.identity_for(sni).unwrap().names.clone();
    assert_eq!(names_of(Some("v1.api.test")), ["*.api.test"]);
    assert_eq!(names_of(Some("V1.API.TEST.")), ["*.api.test"], "case and a trailing dot do not matter");
    assert_eq!(names_of(Some("example.test")), ["www.example.test", "example.test"]);
    // A wildcard covers one label, not the domain itself nor two labels.
    assert_eq!(names_of(Some("api.test")), ["www.example.test", "example.test"]);
    assert_eq!(names_of(Some("a.b.api.test")), ["www.example.test", "example.test"]);
    assert_eq!(names_of(None), ["www.example.test", "example.test"], "no SNI: the first identity");
    assert!(Policy::builtin_default().server.listen.is_empty(), "no guest listens by default");
}

#[test]
fn server_errors_name_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = leaf_pem(&["a.test"]);
    let (_, other_key) = leaf_pem(&["b.test"]);
    std::fs::write(dir.path().join("a.pem"), cert).unwrap();
    std::fs::write(dir.path().join("a.key"), key).unwrap();
    std::fs::write(dir.path().join("other.key"), other_key).unwrap();
    let refused = |text: &str, line: usize, fragment: &str| {
        let error = Policy::from_toml_str(text, "p", dir.path()).expect_err(text);
        assert_eq!(error.line, Some(line), "{text:?}: {error}");
        assert!(error.message.contains(fragment), "{text:?}: {error}");
    };
    let identity = "[[server.identities]]\ncertificate_chain = \"a.pem\"\nprivate_key = \"a.key\"\n";
    refused(&format!("{identity}[[server.listen]]\nguest_port = 0\nhost = \"127.0.0.1:1\"\n"), 5, "not a port");
    refused(&format!("{identity}[[server.listen]]\nguest_port = 70000\nhost = \"127.0.0.1:1\"\n"), 5, "not a port");
    refused(&format!("{identity}[[server.listen]]\nguest_port = 1\nhost = \"localhost:1\"\n"), 6, "not an address and port");
    refused(&format!("{identity}[[server.listen]]\nguest_port = 1\nhost = \"127.0.0.1:0\"\n"), 6, "needs a port");
    refused(
        &format!("{identity}[[server.listen]]\nguest_port = 1\nhost = \"127.0.0.1:1\"\n[[server.listen]]\nguest_port = 1\nhost = \"127.0.0.1:2\"\n"),
        8,
        "mapped twice",
    );
    refused("[[server.listen]]\nguest_port = 1\nhost = \"127.0.0.1:1\"\n", 1, "names no certificate");
    refused("[[server.identities]]\ncertificate_chain = \"a.pem\"\nprivate_key = \"other.key\"\n", 1, "does not belong");
    refused("[[server.identities]]\ncertificate_chain = \"missing.pem\"\nprivate_key = \"a.key\"\n", 1, "cannot read");
    refused("[[server.identities]]\ncertificate_chain = \"a.key\"\nprivate_key = \"a.key\"\n", 1, "no PEM certificate");
    refused("[[server.identities]]\ncertificate_chain = \"a.pem\"\nprivate_key = \"a.pem\"\n", 1, "no PEM private key");
    refused("[[server.identities]]\ncertificate_chain = \"a.pem\"\n", 1, "missing field `private_key`");
}

#[test]
fn listen_backlogs_default_and_are_capped() {
    assert_eq!(super::backlog(0), DEFAULT_BACKLOG);
    assert_eq!(super::backlog(-1), DEFAULT_BACKLOG);
    assert_eq!(super::backlog(8), 8);
    assert_eq!(super::backlog(1 << 40), MAX_BACKLOG);
}
