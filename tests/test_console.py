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


@pytest.fixture
def console(esrs) -> Iterator[tuple[Callable[..., str], int]]:
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

    def keys(*typed: str, literal: bool = False, settle: float = 0.8) -> str:
        """Type, wait for the screen to settle, return what the terminal shows."""
        if typed:
            subprocess.run([tmux, "send-keys", "-t", session, *(["-l"] if literal else []), *typed], check=True)
        time.sleep(settle)
        return subprocess.run([tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield keys, port
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], check=False)  # our own session, by its name


def wait_for(keys: Callable[..., str], text: str, seconds: float = 10) -> str:
    deadline = time.monotonic() + seconds
    screen = keys()
    while text not in screen and time.monotonic() < deadline:
        screen = keys(settle=0.3)
    return screen


def test_console_shows_the_marker_the_tls_records_view_and_runs_esrs_decode(console) -> None:
    keys, port = console
    assert exchange(("127.0.0.1", port), b"GET /stray HTTP/1.1\r\nHost: x\r\n\r\n", 8).status == 502
    flows = wait_for(keys, "/stray")
    (row,) = [line for line in flows.splitlines() if " GET " in line and "/stray" in line]
    assert "502" in row and "\u26a0" in row  # the marker in the flow list
    keys("Enter")  # open the flow
    detail = keys("Tab")  # its response
    assert "TLS records" in detail  # chosen by the automatic view selection
    assert f"esrs-fix: {SUMMARY}" in detail
    assert "description   unexpected_message (10)" in detail
    keys("q")  # back to the flow list
    keys(":")
    keys("esrs.decode 15 03 01 00 02 02 0a", literal=True)
    viewer = keys("Enter", settle=1.5)
    assert "level         fatal (2)" in viewer and "version       TLS 1.0 (0x0301)" in viewer
    keys("q")  # back to the flow list
    keys(":")
    keys("esrs.upgraded", literal=True)
    listed = keys("Enter", settle=1.5)
    assert "esrs-fix: no learned targets" in listed  # esrs_upgrade is off here: nothing was learned
