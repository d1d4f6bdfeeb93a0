"""The mitmproxy console (urwid) as a person uses it, in a real terminal: tmux runs it, send-keys types."""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from stray_tls.core.names import ATTEMPT_MARKER, LEARNED_MARKER, UPGRADED_MARKER
from stray_tls.fieldkit.wire import exchange
from stray_tls.lab import servers
from stray_tls.lab.servers import Plaintext
from stray_tls.launch import mitmproxy_command

from .conftest import SUMMARY


def glyph(marker: str) -> str:
    """The glyph the console draws for a marker (mitmproxy's list; its first character)."""
    from mitmproxy.utils import emoji

    return emoji.emoji[marker][0]


pytestmark = pytest.mark.e2e


Screen = Callable[[], str]
Send = Callable[..., None]


@pytest.fixture
def console_with(esrs, cert) -> Iterator[Callable[..., tuple[Send, Screen, int]]]:
    """mitmproxy's console in a tmux session of its own, reverse-proxying to a stray-alert upstream, with the given
    extra arguments (`trusted=True`: mitmproxy trusts the upstream's certificate, for esrs_upgrade)."""
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed (.ci/run installs it)")
    sessions: list[str] = []

    def start(*args: str, trusted: bool = False) -> tuple[Send, Screen, int]:
        upstream = esrs(Plaintext.ALERT)
        port = servers.free_port()
        session = f"esrs-fix-test-{port}"
        extra = [*args, *(["--set", f"ssl_verify_upstream_trusted_ca={cert[0]}"] if trusted else [])]
        command = shlex.join(
            [*mitmproxy_command("mitmproxy"), "--mode", f"reverse:http://127.0.0.1:{upstream.port}@{port}", *extra]
        )
        subprocess.run([tmux, "new-session", "-d", "-s", session, "-x", "160", "-y", "45", command], check=True)
        sessions.append(session)

        def send(*typed: str, literal: bool = False) -> None:
            """Type; the console reads the keys in order, so the next wait is for the screen they lead to."""
            subprocess.run([tmux, "send-keys", "-t", session, *(["-l"] if literal else []), *typed], check=True)

        def screen() -> str:
            return subprocess.run([tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        return send, screen, port

    try:
        yield start
    finally:
        for session in sessions:
            subprocess.run([tmux, "kill-session", "-t", session], check=False)  # our own session, by its name


@pytest.fixture
def console(console_with) -> tuple[Send, Screen, int]:
    """The console without esrs_upgrade."""
    return console_with()


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


def test_console_lists_an_upgrade_its_attempt_and_a_learned_flow_by_their_markers(console_with) -> None:
    """The flow list tells what esrs-fix did: the upgraded flow, its TLS attempt and the learned flow each have their
    marker (glyphs a terminal font has)."""
    _, screen, port = console_with("--set", "esrs_upgrade=true", trusted=True)
    for path in (b"/upgraded", b"/learned"):
        assert exchange(("127.0.0.1", port), b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n", 20).status == 200

    def rows(shown: str, path: str) -> list[str]:
        return [line for line in shown.splitlines() if " GET " in line and path in line and "200" in line]

    shown = wait_until(
        screen, lambda s: len(rows(s, "/upgraded")) == 2 and len(rows(s, "/learned")) == 1, "the three flows"
    )
    upgraded = [row for row in rows(shown, "/upgraded") if " HTTP " in row]
    attempt = [row for row in rows(shown, "/upgraded") if " HTTPS " in row]
    assert len(upgraded) == 1 and glyph(UPGRADED_MARKER) in upgraded[0], shown
    assert len(attempt) == 1 and glyph(ATTEMPT_MARKER) in attempt[0], shown
    (learned,) = rows(shown, "/learned")
    assert glyph(LEARNED_MARKER) in learned and " HTTPS " in learned, shown
