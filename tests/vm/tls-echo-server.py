#!/usr/bin/env python3
"""A TLS echo server on 127.0.0.1 (Python's ssl, i.e. OpenSSL) for VM
tests: prints its port (and "connection" for each client), echoes every
connection until the client's
close_notify, answers it with its own, and serves until killed.
usage: tls-echo-server.py CERT KEY"""
import socket
import ssl
import sys
import threading


def serve(conn, context):
    try:
        with context.wrap_socket(conn, server_side=True) as tls:
            while data := tls.recv(65536):
                tls.sendall(data)
            tls.unwrap()  # close_notify back
    except (OSError, ssl.SSLError) as error:
        print(f"tls-echo-server: {error}", file=sys.stderr, flush=True)


def main():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        print("connection", flush=True)
        threading.Thread(target=serve, args=(conn, context), daemon=True).start()


if __name__ == "__main__":
    main()
