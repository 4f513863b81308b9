#!/usr/bin/env python3
"""The measuring end of the pod network benchmark, run by bench/pods/net.py
in the network namespace at the host's end of the pod's veth (`ip netns
exec`). Talks to the servers the pod's container started (see net.py):

- port 5001, `nc -ll -e wc -c`: host → pod, the client sends N bytes,
  closes its side and reads back the count the pod received;
- port 5002, `nc -ll -e sh -c 'read n; exec head -c $n /dev/zero'`:
  pod → host, the client asks for N bytes and counts them to end of file;
- port 5003, `nc -ll -e cat`: TCP round trips of one byte on one connection;
- port 8080, busybox `httpd`: HTTP/1.0 GETs, a new connection each.

Prints the figures as JSON. Python 3 stdlib only."""

import argparse
import json
import socket
import sys
import time

MIB = 1 << 20
CHUNK = 256 << 10


class ClientError(Exception):
    pass


def connect(args, port):
    s = socket.create_connection((args.host, port), timeout=args.timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_to_eof(s):
    """Everything the peer sends until it closes its side."""
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk


def wait_ready(args):
    """Until every server accepts a connection (they start in the background)."""
    deadline = time.monotonic() + args.timeout
    for port in (5001, 5002, 5003, 8080):
        while True:
            try:
                # Port 5001 counts what it receives: send nothing, read the "0".
                with connect(args, port) as s:
                    if port in (5001, 5002):
                        if port == 5002:
                            s.sendall(b"0\n")
                        s.shutdown(socket.SHUT_WR)
                        read_to_eof(s)
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    raise ClientError(f"the pod's port {port} does not answer: {e}") from e
                time.sleep(0.2)


def to_pod(args, nbytes):
    """Host → pod: (seconds from connect to the pod's count)."""
    block = bytes(min(CHUNK, max(nbytes, 1)))
    start = time.perf_counter()
    with connect(args, 5001) as s:
        left = nbytes
        while left:
            n = min(left, len(block))
            s.sendall(block[:n])
            left -= n
        s.shutdown(socket.SHUT_WR)
        reply = read_to_eof(s)
    took = time.perf_counter() - start
    if reply.strip() != str(nbytes).encode():
        raise ClientError(f"host → pod: sent {nbytes} bytes, the pod counted {reply!r}")
    return took


def from_pod(args, nbytes):
    """Pod → host: (connect to end of file, first byte to end of file)."""
    start = time.perf_counter()
    first = None
    got = 0
    with connect(args, 5002) as s:
        s.sendall(f"{nbytes}\n".encode())
        buf = bytearray(CHUNK)
        while True:
            n = s.recv_into(buf)
            if not n:
                break
            if first is None:
                first = time.perf_counter()
            got += n
    end = time.perf_counter()
    if got != nbytes:
        raise ClientError(f"pod → host: asked for {nbytes} bytes, received {got}")
    return end - start, (end - first) if first else 0.0


def round_trips(args, count):
    """One-byte round trips on one connection to the pod's `cat`: ms each."""
    times = []
    with connect(args, 5003) as s:
        for _ in range(count):
            start = time.perf_counter()
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise ClientError("the pod's echo did not answer x")
            times.append((time.perf_counter() - start) * 1000)
    return times


def http_get(args):
    """One GET on a new connection: ms to the end of the answer."""
    start = time.perf_counter()
    with connect(args, 8080) as s:
        s.sendall(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
        answer = read_to_eof(s)
    took = (time.perf_counter() - start) * 1000
    if not answer.startswith(b"HTTP/1.") or b" 200 " not in answer.split(b"\r\n", 1)[0] or \
            b"hello from the pod" not in answer:
        raise ClientError(f"the pod's httpd answered {answer[:200]!r}")
    return took


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", required=True)
    ap.add_argument("--mib", type=float, required=True, help="bytes per throughput run, MiB")
    ap.add_argument("--large-mib", type=float, default=0,
                    help="also a larger transfer each way per round, MiB (0: none)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--round-trips", type=int, default=100)
    ap.add_argument("--gets", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    nbytes = int(args.mib * MIB)
    wait_ready(args)
    # Uncounted: ARP, the page cache, the guest's first forks of each server.
    for _ in range(args.warmup):
        to_pod(args, 64 << 10)
        from_pod(args, 64 << 10)
        http_get(args)
    round_trips(args, 10)
    result = {"bytes": nbytes, "to_pod": [], "to_pod_empty": [], "from_pod": [], "from_pod_empty": []}
    for r in range(args.rounds):
        result["to_pod"].append(to_pod(args, nbytes))
        result["to_pod_empty"].append(to_pod(args, 0))
        total, streaming = from_pod(args, nbytes)
        result["from_pod"].append({"total_s": total, "streaming_s": streaming})
        result["from_pod_empty"].append(from_pod(args, 0)[0])
        if args.large_mib:
            large = int(args.large_mib * MIB)
            result["large_bytes"] = large
            result.setdefault("to_pod_large", []).append(to_pod(args, large))
            result.setdefault("from_pod_large", []).append(from_pod(args, large)[1])
        print(f"podnet: round {r + 1}: to pod {result['to_pod'][-1]:.3f} s, from pod {total:.3f} s",
              file=sys.stderr)
    result["round_trip_ms"] = round_trips(args, args.round_trips)
    result["get_ms"] = [http_get(args) for _ in range(args.gets)]
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    try:
        main()
    except (ClientError, OSError) as e:
        print(f"podnet client: error: {e}", file=sys.stderr)
        sys.exit(1)
