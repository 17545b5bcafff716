# Shared by the VM tests that need TLS servers on the host: a throwaway CA,
# a leaf for localhost/127.0.0.1, and a policy trusting that CA.
# make_test_pki DIR: writes ca.pem, leaf.pem, leaf.key and policy.toml in DIR.
make_test_pki() {
    local dir=$1 repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    (
        cd "$dir"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
            -subj /CN=vhost-tls-vm-test-ca -days 2 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key -out leaf.csr \
            -subj /CN=localhost 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n' > leaf.ext
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 \
            -extfile leaf.ext 2>/dev/null
        sed 's/^system_roots = true/system_roots = false\nca_files = ["ca.pem"]/' "$repo/qemu/test-policy.toml" > policy.toml
    )
}

# wait_for_line FILE PATTERN: until FILE has a line matching PATTERN (10 s).
wait_for_line() {
    for _ in $(seq 100); do grep -qE "$2" "$1" && return 0; sleep 0.1; done
    return 1
}
