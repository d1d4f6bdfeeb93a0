"""The load generator: asyncio, keep-alive connections, absolute-form requests through a proxy."""

from __future__ import annotations

import asyncio
import time

from stray_tls.core.names import LABEL_HEADER

Answer = tuple[str, int, dict[str, str], bytes]  # url, status, headers (lower-case names), body
#: The addon's label header as `Answer`'s headers name it.
LABEL = LABEL_HEADER.lower()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, dict[str, str], bytes]:
    """Write one request and read its answer (status, headers, body by Content-Length)."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def request_for(url: str) -> bytes:
    return f"GET {url} HTTP/1.1\r\nHost: {url.split('/')[2]}\r\n\r\n".encode()


async def _load(
    proxy: int, urls: list[str], concurrency: int, timeout: float
) -> tuple[float, list[float], list[Answer]]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for u in urls:
        queue.put_nowait(u)
    latencies: list[float] = []
    answers: list[Answer] = []

    async def worker() -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while not queue.empty():
            url = queue.get_nowait()
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", proxy)
            started = time.perf_counter()
            status, headers, body = await asyncio.wait_for(exchange(*conn, request_for(url)), timeout)
            latencies.append(time.perf_counter() - started)
            answers.append((url, status, headers, body))
            if headers.get("connection", "").lower() == "close":
                conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, answers


def load(
    proxy: int, urls: list[str], concurrency: int, timeout: float = 30.0
) -> tuple[float, list[float], list[Answer]]:
    """Send every URL once, `concurrency` connections at a time: wall time, latencies and answers (in one order)."""
    return asyncio.run(_load(proxy, urls, concurrency, timeout))


def echo_body(url: str) -> bytes:
    """What the bench's origin answers to `url`: its path."""
    return ("/" + url.split("/", 3)[3]).encode()
