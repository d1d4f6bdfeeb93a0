"""The mitmproxy console (urwid) as a person uses it, in a real terminal: tmux runs it, send-keys types."""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from stray_tls.lab import servers
from stray_tls.lab.servers import Plaintext
from stray_tls.launch import mitmproxy_command
from stray_tls.wire import exchange

from .conftest import SUMMARY

pytestmark = pytest.mark.e2e


Screen = Callable[[], str]
Send = Callable[..., None]


@pytest.fixture
def console(esrs) -> Iterator[tuple[Send, Screen, int]]:
    """mitmproxy's console in a tmux session of its own, reverse-proxying to a stray-alert upstream."""
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed (.ci/run installs it)")
    upstream = esrs(Plaintext.ALERT)
    port = servers.free_port()
    session = f"esrs-fix-test-{port}"
    command = shlex.join(
        [*mitmproxy_command("mitmproxy"), "--mode", f"reverse:http://127.0.0.1:{upstream.port}@{port}"]
    )
    subprocess.run([tmux, "new-session", "-d", "-s", session, "-x", "160", "-y", "45", command], check=True)

    def send(*typed: str, literal: bool = False) -> None:
        """Type; the console reads the keys in order, so the next wait is for the screen they lead to."""
        subprocess.run([tmux, "send-keys", "-t", session, *(["-l"] if literal else []), *typed], check=True)

    def screen() -> str:
        return subprocess.run([tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield send, screen, port
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], check=False)  # our own session, by its name


def wait_until(screen: Screen, shows: Callable[[str], bool], what: str, seconds: float = 15) -> str:
    """Poll the terminal until `shows(screen)`; the screen, or a failure naming `what` with the last screen."""
    deadline = time.monotonic() + seconds
    while True:
        shown = screen()
        if shows(shown):
            return shown
        if time.monotonic() > deadline:
            pytest.fail(f"the console never showed {what} within {seconds} s; last screen:\n{shown}")
        time.sleep(0.1)


def wait_for(screen: Screen, text: str, seconds: float = 15) -> str:
    return wait_until(screen, lambda shown: text in shown, repr(text), seconds)


def test_console_shows_the_marker_the_tls_records_view_and_runs_esrs_decode(console) -> None:
    send, screen, port = console
    assert exchange(("127.0.0.1", port), b"GET /stray HTTP/1.1\r\nHost: x\r\n\r\n", 8).status == 502

    def stray_rows(shown: str) -> list[str]:
        return [line for line in shown.splitlines() if " GET " in line and "/stray" in line]

    # the row is listed with the request, and completed when the response arrives
    flows = wait_until(screen, lambda shown: any("502" in row for row in stray_rows(shown)), "the flow's 502")
    (row,) = stray_rows(flows)
    assert "\u26a0" in row  # the marker in the flow list
    send("Enter")  # open the flow
    send("Tab")  # its response
    detail = wait_for(screen, "description   unexpected_message (10)")
    assert "TLS records" in detail  # chosen by the automatic view selection
    assert f"esrs-fix: {SUMMARY}" in detail
    send("q")  # back to the flow list
    wait_until(screen, lambda shown: "description   unexpected_message" not in shown, "the flow list again")
    send(":")
    send("esrs.decode 15 03 01 00 02 02 0a", literal=True)
    send("Enter")
    viewer = wait_for(screen, "level         fatal (2)")
    assert "version       TLS 1.0 (0x0301)" in viewer
    send("q")  # back to the flow list
    wait_until(screen, lambda shown: "level         fatal (2)" not in shown, "the flow list again")
    send(":")
    send("esrs.upgraded", literal=True)
    send("Enter")
    wait_for(screen, "esrs-fix: no learned targets")  # esrs_upgrade is off here: nothing was learned
