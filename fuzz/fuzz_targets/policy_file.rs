//! The policy parser (operator input, TOML, with `include`): any text must
//! give a policy or an error naming a line, never a panic. Paths resolve
//! in a directory holding a CA, a server identity and `base.toml`.
//! Inputs naming /dev, /proc or /sys are skipped: including a device file
//! (/dev/stdin, say) would block, which an operator can do to themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tls_engine::policy::Limits;
use tls_engine::Policy;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else { return };
    if ["/dev", "/proc", "/sys"].iter().any(|special| text.contains(special)) {
        return;
    }
    let dir = vhost_tls_fuzz::fixture().dir();
    match Policy::from_toml_str(text, "fuzz.toml", dir) {
        Ok(policy) => {
            assert!(policy.min_version <= policy.max_version, "a policy with no TLS version");
            assert!(Limits::MAX_SOCKETS.contains(&policy.limits.max_sockets));
            assert!(Limits::SOCKET_BUFFER_BYTES.contains(&policy.limits.socket_buffer_bytes));
            assert!(Limits::TIMEOUT_SECS.contains(&policy.limits.handshake_timeout_secs));
            assert!(Limits::TIMEOUT_SECS.contains(&policy.limits.connect_timeout_secs));
            assert!(!policy.cipher_suites.is_empty(), "a policy with no cipher suite");
        }
        Err(error) => {
            let lines = text.lines().count().max(1) + 1;
            if let Some(line) = error.line {
                // A line in this text, or in an included file (base.toml is short).
                assert!(line >= 1 && line <= lines.max(8), "error on line {line} of a {lines}-line text: {error}");
            }
        }
    }
});
