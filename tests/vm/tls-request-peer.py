#!/usr/bin/env python3
"""A TLS request/response peer on 127.0.0.1 for tests/vm/tls-nodelay.c:
reads whole 64-byte requests and answers each with 64 bytes, so a request
that arrives in two segments waits for its second (Nagle's algorithm on
the sender against this side's delayed ACK). Prints its port, serves until
killed.
usage: tls-request-peer.py CERT KEY"""
import socket
import ssl
import sys
import threading

REQUEST = 64


def serve(conn, context):
    try:
        with context.wrap_socket(conn, server_side=True) as tls:
            pending = b""
            while data := tls.recv(65536):
                pending += data
                while len(pending) >= REQUEST:
                    pending = pending[REQUEST:]
                    tls.sendall(b"a" * REQUEST)
    except (OSError, ssl.SSLError) as error:
        print(f"tls-request-peer: {error}", file=sys.stderr, flush=True)


def main():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, context), daemon=True).start()


if __name__ == "__main__":
    main()
