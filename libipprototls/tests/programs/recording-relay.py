#!/usr/bin/env python3
"""A plain TCP relay on 127.0.0.1 that records every byte, for
tls-plaintext.c: the program connects IPPROTO_TLS sockets here, the relay
passes the bytes on to a TLS server (so handshakes complete and the server
decrypts what was sent through TLS), and back, keeping a copy of each
connection's bytes in DIR/N.up (client to server) and DIR/N.down.

usage: recording-relay.py serve DIR TARGET_PORT
           prints its port, then relays until killed;
       recording-relay.py check DIR MARKER CONNECTIONS
           exit status 0 when exactly CONNECTIONS connections were recorded
           and completed, each direction of each nothing but well-formed
           TLS records, and MARKER appears in none of them."""
import os
import socket
import sys
import threading
import time


def pump(source, sink, record):
    try:
        while data := source.recv(65536):
            record.write(data)
            record.flush()
            sink.sendall(data)
    except OSError:
        pass
    for conn in (sink, source):
        try:
            conn.shutdown(socket.SHUT_WR if conn is sink else socket.SHUT_RD)
        except OSError:
            pass


def relay(client, number, directory, target_port):
    up, down = (os.path.join(directory, f"{number}.{direction}") for direction in ("up", "down"))
    with (
        client,
        socket.create_connection(("127.0.0.1", target_port)) as server,
        open(up + ".part", "wb") as up_record,
        open(down + ".part", "wb") as down_record,
    ):
        back = threading.Thread(target=pump, args=(server, client, down_record), daemon=True)
        back.start()
        pump(client, server, up_record)
        back.join(10)
    # Complete: both sides ended.
    os.rename(down + ".part", down)
    os.rename(up + ".part", up)


def serve(directory, target_port):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(listener.getsockname()[1], flush=True)
    number = 0
    while True:
        client, _ = listener.accept()
        number += 1
        threading.Thread(target=relay, args=(client, number, directory, target_port), daemon=True).start()


def tls_records(data):
    """The records' content types, or a description of the first bytes
    that are not a TLS record."""
    types, position = [], 0
    while position < len(data):
        header = data[position:position + 5]
        if len(header) < 5:
            return f"a cut record header at byte {position}: {header!r}"
        content_type, major, length = header[0], header[1], int.from_bytes(header[3:5], "big")
        # change_cipher_spec, alert, handshake, application_data; TLS 1.x;
        # at most 2^14 + 2048 bytes of ciphertext.
        if content_type not in (20, 21, 22, 23) or major != 3 or length > (1 << 14) + 2048:
            return f"not a TLS record at byte {position}: {data[position:position + 40]!r}"
        if position + 5 + length > len(data):
            return f"a record cut short at byte {position}"
        types.append(content_type)
        position += 5 + length
    return types


def check(directory, marker, expected):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(name.endswith(".part") for name in os.listdir(directory)):
        time.sleep(0.05)  # the relay is still passing the last bytes on
    names = sorted(os.listdir(directory), key=lambda name: (int(name.split(".")[0]), name))
    failed = False
    if len(names) != 2 * expected or any(not name.endswith((".up", ".down")) for name in names):
        print(f"relay: expected {expected} completed connections, found {names}")
        failed = True
    for name in names:
        data = open(os.path.join(directory, name), "rb").read()
        found = data.find(marker.encode())
        records = tls_records(data)
        if found >= 0:
            print(f"relay: connection {name}: PLAINTEXT on the wire: {data[max(0, found - 20):found + 60]!r}")
            failed = True
        if isinstance(records, str):
            print(f"relay: connection {name}: {records}")
            failed = True
        elif records and records[0] != 22:
            print(f"relay: connection {name}: does not start with a handshake record")
            failed = True
        else:
            print(f"relay: connection {name}: {len(data)} bytes, {len(records)} TLS records, no marker")
    return not failed


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(0 if check(sys.argv[2], sys.argv[3], int(sys.argv[4])) else 1)
