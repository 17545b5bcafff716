#!/usr/bin/env python3
"""A TLS echo server on 127.0.0.1 (Python's ssl, i.e. OpenSSL) for VM
tests: prints its port (and "connection" for each client), echoes every
connection until the client's close_notify, answers it with its own, and
serves until killed.
With --whole N it echoes only whole N-byte requests, each once complete,
so a request that arrives in two segments waits for its second (Nagle's
algorithm on the sender against this side's delayed ACK: tls-nodelay.c).
usage: tls-echo-server.py CERT KEY [--whole N]"""
import socket
import ssl
import sys
import threading


def serve(conn, context, whole):
    try:
        with context.wrap_socket(conn, server_side=True) as tls:
            pending = b""
            while data := tls.recv(65536):
                if not whole:
                    tls.sendall(data)
                    continue
                pending += data
                while len(pending) >= whole:
                    tls.sendall(pending[:whole])
                    pending = pending[whole:]
            tls.unwrap()  # close_notify back
    except (OSError, ssl.SSLError) as error:
        print(f"tls-echo-server: {error}", file=sys.stderr, flush=True)


def main():
    if len(sys.argv) not in (3, 5) or (len(sys.argv) == 5 and sys.argv[3] != "--whole"):
        sys.exit(__doc__.splitlines()[-1])
    whole = int(sys.argv[4]) if len(sys.argv) == 5 else 0
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        print("connection", flush=True)
        threading.Thread(target=serve, args=(conn, context, whole), daemon=True).start()


if __name__ == "__main__":
    main()
