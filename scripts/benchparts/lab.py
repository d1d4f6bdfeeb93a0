"""The peers and the proxies: an origin and two stray-alert servers in a process of their own, and two mitmdumps.

- origin: echoes the request's path in a 200;
- closing: answers a plaintext request with the TLS alert and closes;
- keeping: answers with the alert and keeps its connection open;
- proxies: stock mitmdump, and mitmdump with esrs-fix (rewrite on, with a filter naming the two stray ports).
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from stray_tls.lab import servers
from stray_tls.lab.mitm import Mitmdump

from .cpu import cpu_seconds


def echo_answer(head: bytes) -> bytes:
    path = head.split(b" ", 2)[1]
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path)


def _serve(pipe: Any, workdir: str) -> None:
    """The peers, in a process of their own: their threads must not share a GIL with the load generator."""
    cert = servers.make_certificate(Path(workdir))
    started = [
        servers.ScriptedServer(echo_answer).start(),
        servers.EsrsServer(cert).start(),
        servers.EsrsServer(cert, servers.EsrsBehaviour(plaintext=servers.Plaintext.ALERT_KEEP_OPEN)).start(),
    ]
    pipe.send([s.port for s in started])
    pipe.recv()  # until the bench says stop
    for s in started:
        s.stop()


class Lab:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proxies: dict[str, Mitmdump] = {}
        self.port: dict[str, int] = {}
        self._peers: Any = None
        self._pipe: Any = None
        self.origin = self.closing = self.keeping = 0

    def start(self) -> None:
        """Start the peers, then the proxies; on a failure, stop whatever had started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        context = multiprocessing.get_context("fork")  # the bench starts the lab before any part starts a thread
        self._pipe, child = context.Pipe()
        self._peers = context.Process(target=_serve, args=(child, str(self.workdir)), daemon=True)
        self._peers.start()
        if not self._pipe.poll(30):
            raise RuntimeError("the bench's servers did not start")
        self.origin, self.closing, self.keeping = self._pipe.recv()
        stray_filter = f"~u :({self.closing}|{self.keeping})/"
        self.port = {"stock": servers.free_port(), "addon": servers.free_port()}
        common = ["--set", "flow_detail=0"]
        self.proxies = {
            "stock": Mitmdump(["-p", str(self.port["stock"]), *common], self.workdir / "stock.log", addon=False),
            "addon": Mitmdump(
                [
                    "-p",
                    str(self.port["addon"]),
                    *common,
                    "--set",
                    "esrs_rewrite=true",
                    "--set",
                    f"esrs_filter={stray_filter}",
                ],
                self.workdir / "addon.log",
            ),
        }
        for m in self.proxies.values():
            m.start()

    def stop(self) -> None:
        """Stop whatever start() got to start (each by its own process id)."""
        for m in self.proxies.values():
            m.stop()
        if self._peers is not None:
            self._pipe.send("stop")
            self._peers.join(timeout=10)
            self._peers = None

    def cpu_seconds(self, name: str) -> float:
        """User + system CPU seconds of one mitmdump so far (/proc): steadier on a noisy host than wall time."""
        process = self.proxies[name].process
        if process is None:
            raise RuntimeError(f"mitmdump {name} is not running")
        return cpu_seconds(process.pid)

    def origin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.origin}/{path}"
