"""The C client of ``benchmarks/bench_latency.py`` reads whole responses, whatever their framing.

Its latencies are only right if it waits for the last byte of each response: a client that
stopped at the headers, or read into the next response, would time something else. Three tiny
servers answer as uvicorn (keep-alive, ``Content-Length``), gunicorn's sync worker
(``Connection: close`` with a length) and Django without ``CommonMiddleware`` (``Connection:
close``, no length: the body ends at EOF) do, and gunicorn does for that app (chunks, then
``Connection: close``: the response ends at the last chunk), each sending its response in
pieces. A fourth
keeps connections alive but closes each after three responses without a word, as a server
whose keep-alive timeout ran out does: the client must send the request again on a new one.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "benchmarks" / "latency_client.c"
BODY = b'{"id": 1}' * 50  # 450 bytes, sent in several writes
#: How long the chunked server waits after the last chunk before it closes: not latency.
AFTER_THE_LAST_CHUNK = 0.05


def _response(style: str) -> list[bytes]:
    """The pieces of one response, written with pauses between them."""
    if style in ("keep-alive", "idle-close"):
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        return [head[:20], head[20:] % len(BODY), BODY[:100], BODY[100:]]
    if style == "close":
        head = b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: %d\r\n\r\n" % len(BODY)
        return [head, BODY[:7], BODY[7:]]
    if style == "chunked":  # gunicorn's answer to Django's JsonResponse with no length
        head = b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"%x\r\n%s\r\n" % (len(BODY), BODY)
        return [head + chunk[:5], chunk[5:200], chunk[200:] + b"0\r", b"\n\r\n"]
    head = b"HTTP/1.1 200 OK\r\nServer: x\r\nConnection: close\r\n\r\n"  # no length: until EOF
    return [head + BODY[:3], BODY[3:200], BODY[200:]]


def _accept_each(listener: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    """Hand every connection ``listener`` accepts to ``handle``, closing it after, until the
    listener is closed."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            handle(conn)


def _serve(listener: socket.socket, style: str, served: list[int]) -> None:
    def answer(conn: socket.socket) -> None:
        answered = 0
        while True:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                request += chunk
            if not request:
                break
            assert request.startswith(b"GET /items/1 HTTP/1.1\r\n")
            served.append(1)  # before the answer: the client may be gone once it has it all
            for piece in _response(style):
                conn.sendall(piece)
                time.sleep(0.001)
            answered += 1
            if style == "idle-close" and answered == 3:
                break  # closed unannounced, before the next request arrives
            if style == "chunked":
                time.sleep(AFTER_THE_LAST_CHUNK)  # the server's own work before it closes
            if style not in ("keep-alive", "idle-close"):
                break

    _accept_each(listener, answer)


@pytest.fixture
def client(tmp_path: Path) -> str:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no C compiler (cc or gcc) for benchmarks/latency_client.c")
        pytest.skip("no C compiler")
    out = tmp_path / "latency_client"
    subprocess.run([compiler, "-O2", "-o", str(out), str(SOURCE)], check=True, timeout=120)
    return str(out)


@pytest.fixture
def servers() -> Iterator[tuple[dict[str, str], dict[str, list[int]]]]:
    ports: dict[str, str] = {}
    served: dict[str, list[int]] = {}
    listeners = []
    for style in ("keep-alive", "close", "eof", "idle-close", "chunked"):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listeners.append(listener)
        ports[style] = str(listener.getsockname()[1])
        served[style] = []
        threading.Thread(target=_serve, args=(listener, style, served[style]), daemon=True).start()
    yield ports, served
    for listener in listeners:
        listener.close()


def test_every_response_is_read_to_its_last_byte(
    client: str, servers: tuple[dict[str, str], dict[str, list[int]]]
) -> None:
    ports, served = servers
    cycles, block, settle, warmup = 3, 4, 1, 2
    done = subprocess.run(
        [client, str(cycles), str(block), str(settle), str(warmup), "7", *ports.values()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(ports)
    for style, line in zip(ports, lines, strict=True):
        latencies = [int(v) for v in line.split()]
        assert len(latencies) == cycles * block
        # Each response is written in pieces 1 ms apart: a latency under that means the client
        # stopped before the last piece.
        assert min(latencies) >= 1_000_000 * (len(_response("close")) - 1)
        if style == "chunked":  # timed to the last chunk, as wrk times it, not to the close
            assert max(latencies) < 1e9 * AFTER_THE_LAST_CHUNK
    # The warm-up requests, then per cycle the settling requests and the block: nothing more
    # (a client that misread a response would desynchronise and fail, or send extra requests).
    for style in ports:
        assert len(served[style]) == warmup + cycles * (settle + block)


def _run_against(client: str, answer: Callable[[socket.socket], None]) -> Any:
    """One request of ``client`` to a server that treats each connection with ``answer``."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    threading.Thread(target=_accept_each, args=(listener, answer), daemon=True).start()
    try:
        return subprocess.run(
            [client, "1", "1", "0", "0", "7", str(listener.getsockname()[1])],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        listener.close()


def test_a_new_connection_closed_without_an_answer_fails_the_run(client: str) -> None:
    """Only a reused connection is retried: a server that hangs up on a new one is an error."""

    def hang_up(conn: socket.socket) -> None:
        conn.recv(4096)  # the request, then close with no answer

    done = _run_against(client, hang_up)
    assert done.returncode != 0
    assert "recv (headers)" in done.stderr


def test_a_non_200_answer_fails_the_run(client: str) -> None:
    def answer(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")

    done = _run_against(client, answer)
    assert done.returncode != 0
    assert "unexpected response" in done.stderr


def _bench_load() -> Any:
    spec = importlib.util.spec_from_file_location("bench_load", SOURCE.parent / "bench_load.py")
    assert spec is not None
    assert spec.loader is not None
    bench_load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_load)
    return bench_load


def test_host_steal_is_read_from_proc_stat() -> None:
    """bench_latency and bench_load print the CPU time the hypervisor took during their runs."""
    bench_load = _bench_load()
    # user nice system idle iowait irq softirq steal guest guest_nice
    before = bench_load.cpu_times("cpu  100 0 50 800 0 0 0 50 30 0\n")
    after = bench_load.cpu_times("cpu  200 0 100 1500 0 0 0 200 60 0\n")
    assert (50, 1000) == before
    assert "15.0 % -- over 5 %" in bench_load.steal_percent(before, after)
    assert "0.0 %" == bench_load.steal_percent((0, 100), (0, 200))
    assert "unknown" == bench_load.steal_percent(None, after)
    assert bench_load.cpu_times("intr 1 2 3") is None
    if Path("/proc/stat").exists():
        steal, total = bench_load.cpu_times()
        assert 0 <= steal <= total


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
def test_server_cpu_time_counts_the_worker_child() -> None:
    """bench_latency's CPU time per request reads the server and its children (gunicorn's
    worker is the master's child): a parent that waits while its child spins reads the child's
    CPU time."""
    bench_load = _bench_load()
    child = (
        "import sys, time\n"
        "end = time.process_time() + 0.4\n"
        "while time.process_time() < end: pass\n"
        "sys.stdin.read()"  # alive and idle until the test closes stdin
    )
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    proc = subprocess.Popen([sys.executable, "-c", parent], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        seconds = 0.0
        while time.monotonic() < deadline:
            seconds = bench_load.process_cpu_seconds(proc.pid) or 0.0
            if seconds >= 0.35:
                break
            time.sleep(0.05)
        assert seconds >= 0.35
    finally:
        proc.communicate(b"", timeout=20)
    assert bench_load.process_cpu_seconds(2**22 + 12345) is None  # no such process
