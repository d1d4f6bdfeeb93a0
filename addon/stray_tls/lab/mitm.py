"""Run a real mitmdump (or mitmweb) with the addon, on loopback, bounded in time, stopped by its process id."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from ..launch import mitmproxy_command


class MitmError(RuntimeError):
    """mitmdump did not come up; the message carries the tail of its log."""


class Mitmdump:
    """`mitmdump` with the esrs-fix script, its output in a log file.

    `listeners` is how many "listening at" lines to wait for (one per `--mode`). `prefix` goes in front of the
    command (`ip netns exec NAME`: the mode tests run mitmdump in network namespaces); it must exec mitmdump or pass
    SIGINT on to it (`timeout` does), as `stop` signals the process it started.
    """

    tool = "mitmdump"

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        *,
        addon: bool = True,
        listeners: int = 1,
        startup_timeout: float = 30.0,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        self.args = args
        self.prefix = prefix or []
        self.log_path = log_path
        self.addon = addon
        self.listeners = listeners
        self.startup_timeout = startup_timeout
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return self.prefix + mitmproxy_command(self.tool, addon=self.addon) + self.args

    def start(self) -> Mitmdump:
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        try:
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise MitmError(f"{self.tool} exited with status {self.process.returncode}:\n{self.log_tail()}")
                if self.log().count("listening at") >= self.listeners:
                    return self
                time.sleep(0.05)
            raise MitmError(
                f"{self.tool} did not start listening within {self.startup_timeout:.0f} s:\n{self.log_tail()}"
            )
        except BaseException:  # not up, or interrupted while waiting: stop it, by its own process id
            self.stop()
            raise

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def addon_warnings(self) -> list[str]:
        return [line for line in self.log().splitlines() if "esrs-fix:" in line]

    def stop(self, timeout: float = 10.0) -> int | None:
        """Ask it to stop (SIGINT, as Ctrl-C does), then kill it if it will not; only our own process."""
        p = self.process
        if p is None or p.poll() is not None:
            return None if p is None else p.returncode
        p.send_signal(signal.SIGINT)
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.wait(timeout=timeout)

    def __enter__(self) -> Mitmdump:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Mitmweb(Mitmdump):
    """`mitmweb` with the addon, its web UI on `web_port`; no browser is opened.

    mitmproxy 11.1.2 and later protect the UI with a token; `password` is set as `web_password`, sent as `?token=`
    (11.1 reads no `Authorization: Bearer` header, 12 reads both).
    """

    tool = "mitmweb"

    def __init__(self, args: list[str], log_path: Path, web_port: int, password: str = "esrs-fix-test", **kw: Any):
        from .. import compat

        extra = ["--web-host", "127.0.0.1", "--web-port", str(web_port), "--set", "web_open_browser=false"]
        self.password = password if compat.mitmweb_wants_a_password() else ""
        if self.password:
            extra += ["--set", f"web_password={self.password}"]
        kw.setdefault("listeners", 1)
        kw["listeners"] += 1  # the web server says "listening at" too
        super().__init__(extra + args, log_path, **kw)
        self.web_port = web_port

    def api(self, path: str, timeout: float = 10.0) -> bytes:
        """GET an API path of the web UI, authenticated where mitmproxy asks for it."""
        import http.client
        from urllib.parse import quote

        conn = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=timeout)
        token = f"{'&' if '?' in path else '?'}token={quote(self.password, safe='')}" if self.password else ""
        conn.request("GET", path + token)
        response = conn.getresponse()
        body = response.read()
        conn.close()
        if response.status != 200:
            raise MitmError(f"mitmweb {path}: HTTP {response.status}: {body[:200]!r}")
        return body
