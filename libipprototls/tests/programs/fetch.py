#!/usr/bin/env python3
"""Fetches a page over IPPROTO_TLS with Python's own socket module: no TLS
code here, only socket(AF_INET, SOCK_STREAM, 205) and the option numbers
of in_tls.h. Run it under LD_PRELOAD=libipprototls.so.
usage: fetch.py ADDRESS PORT HOST [TIMEOUT]
With TIMEOUT, the socket is non-blocking underneath and Python waits with
poll() (connect: EINPROGRESS, POLLOUT, SO_ERROR)."""
import socket
import sys

IPPROTO_TLS = 205
TLS_HOSTNAME = 85
TLS_CHOSEN_VERSION = 113
TLS_PEER_IDENTITY = 93
TLS_1_3 = 3


def main():
    address, port, host = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM, IPPROTO_TLS) as s:
        if len(sys.argv) > 4:
            s.settimeout(float(sys.argv[4]))
        s.setsockopt(IPPROTO_TLS, TLS_HOSTNAME, host.encode() + b"\0")
        s.connect((address, port))
        version = s.getsockopt(IPPROTO_TLS, TLS_CHOSEN_VERSION)
        peer = s.getsockopt(IPPROTO_TLS, TLS_PEER_IDENTITY, 256).rstrip(b"\0").decode()
        s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        page = b""
        while chunk := s.recv(4096):
            page += chunk
    print(f"version {'TLSv1.3' if version == TLS_1_3 else version}, peer {peer}")
    print(page.decode(errors="replace"))


if __name__ == "__main__":
    main()
