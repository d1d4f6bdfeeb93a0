"""What esrs-fix says about the flows it touched (markers, comments, the TLS attempts' own flows), read back from `-w`,
and what it does not say: no alarming log line for a normal upgrade or label (HTTP/1 and HTTP/2 clients)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import http, io
from mitmproxy.utils import emoji

from stray_tls.core.names import (
    ATTEMPT_MARKER,
    FAILED_MARKER,
    LEARNED_MARKER,
    MARKER,
    REWRITTEN_MARKER,
    UPGRADE_METADATA_KEY,
    UPGRADED_MARKER,
)
from stray_tls.fieldkit.wire import exchange
from stray_tls.lab import servers
from stray_tls.lab.servers import Plaintext
from stray_tls.launch import mitmproxy_command

from .conftest import SUMMARY, reverse_modes

MARKERS = (MARKER, REWRITTEN_MARKER, UPGRADED_MARKER, LEARNED_MARKER, FAILED_MARKER, ATTEMPT_MARKER)
#: mitmdump's words when it prints a response whose body is not there (a streamed one).
CONTENT_MISSING = "content missing"
#: mitmproxy's log line when an addon gives an HTTP/2 answer an upper-case header name.
LOWERCASED = "Lowercased 'X-ESRS-Fix' header"


def read_flows(path: Path) -> list[http.HTTPFlow]:
    with open(path, "rb") as f:
        return [flow for flow in io.FlowReader(f).stream() if isinstance(flow, http.HTTPFlow)]


def test_each_marker_is_one_mitmproxy_knows_and_draws_in_debians_default_font() -> None:
    """mitmweb shows a marker name it does not know as a red circle, and a glyph the fonts lack as an empty box
    (the adhesive bandage did): each marker is in mitmproxy's list, one glyph, drawn by DejaVu Sans."""
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        pytest.skip("fontconfig is not installed (fc-list)")
    assert len(set(MARKERS)) == len(MARKERS)  # one per thing esrs-fix did
    for name in MARKERS:
        glyph = emoji.emoji[name]
        assert len(glyph) == 1, name
        families = subprocess.run(
            [fc_list, f":charset={ord(glyph):x}", "family"], capture_output=True, text=True, check=True
        ).stdout
        assert "DejaVu Sans" in families, f"{name} ({glyph}) is drawn by no DejaVu font: {families!r}"


def test_an_upgrade_and_a_learned_flow_say_what_happened_and_log_no_alarm(cert, esrs, mitmdump, tmp_path) -> None:
    upstream = esrs(Plaintext.ALERT)
    saved = tmp_path / "flows.mitm"
    args, (port,) = reverse_modes([f"http://127.0.0.1:{upstream.port}"])
    options = ["--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}", "-w", str(saved)]
    m = mitmdump([*args, *options])
    for path in (b"/upgraded", b"/learned"):
        answer = exchange(("127.0.0.1", port), b"GET " + path + b" HTTP/1.1\r\nHost: esrs\r\n\r\n", 20)
        assert (answer.status, answer.body) == (200, servers.OK_BODY), m.log_tail()
    m.stop()
    log = m.log()
    assert log.count(CONTENT_MISSING) == 0, log
    assert log.count(f"<< 200 OK {len(servers.OK_BODY)}b") == 3  # the attempt, the upgraded flow, the learned one

    flows = {(f.request.scheme, f.request.path): f for f in read_flows(saved)}
    assert len(flows) == 3
    attempt, upgraded = flows["https", "/upgraded"], flows["http", "/upgraded"]
    learned = flows["https", "/learned"]
    # the TLS attempt: labelled for the flow it served, with the body it received
    assert attempt.is_replay == "request" and attempt.metadata[UPGRADE_METADATA_KEY] == upgraded.id
    assert attempt.marked == ATTEMPT_MARKER
    assert attempt.comment == (
        f"esrs-fix: TLS attempt for flow {upgraded.id} (http://127.0.0.1:{upstream.port}/upgraded): its request "
        f"sent again over TLS\nesrs-fix: answered 200 OK; flow {upgraded.id}'s client got this answer"
    )
    assert attempt.response is not None and attempt.response.raw_content == servers.OK_BODY
    # the upgraded flow names its attempt
    assert upgraded.marked == UPGRADED_MARKER
    assert upgraded.comment == (
        f"esrs-fix: upgraded over TLS; plaintext got {SUMMARY}; the client got the server's own answer "
        f"(TLS attempt: flow {attempt.id})"
    )
    # the learned flow is listed as https://: its comment says the client asked for http://
    assert learned.marked == LEARNED_MARKER
    assert learned.comment.startswith(
        f"esrs-fix: learned: the client asked for http://127.0.0.1:{upstream.port}/learned, sent over TLS at once "
        f"as 127.0.0.1:{upstream.port} was learned "
    )
    assert f"by flow {upgraded.id} (its plaintext attempt got {SUMMARY})" in learned.comment

    # read back by a colleague's mitmdump with the addon, and saved again: history, unchanged
    copy = tmp_path / "copy.mitm"
    command = [*mitmproxy_command("mitmdump"), "-n", "-r", str(saved), "-w", str(copy)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    again = {f.id: (f.marked, f.comment) for f in read_flows(copy)}
    assert again == {f.id: (f.marked, f.comment) for f in flows.values()}


def test_a_failed_upgrade_is_marked_failed_and_its_attempt_says_why(cert, start_server, mitmdump, tmp_path) -> None:
    untrusted = start_server(servers.EsrsServer(servers.make_certificate(tmp_path, "untrusted")))
    saved = tmp_path / "flows.mitm"
    args, (port,) = reverse_modes([f"http://127.0.0.1:{untrusted.port}"])
    options = ["--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}", "-w", str(saved)]
    m = mitmdump([*args, *options])
    assert exchange(("127.0.0.1", port), b"GET /failed HTTP/1.1\r\nHost: esrs\r\n\r\n", 20).status == 502
    m.stop()
    flows = {f.request.scheme: f for f in read_flows(saved)}
    failed, attempt = flows["http"], flows["https"]
    assert failed.marked == FAILED_MARKER  # not the detection's warning sign
    assert failed.comment.startswith("esrs-fix: upgrade failed: certificate verification failed: ")
    assert f"(TLS attempt: flow {attempt.id}); plaintext got {SUMMARY}; " in failed.comment
    assert failed.comment.endswith("the client got esrs-fix's labelled 502")
    assert attempt.marked == ATTEMPT_MARKER and attempt.metadata[UPGRADE_METADATA_KEY] == failed.id
    assert attempt.comment.startswith(f"esrs-fix: TLS attempt for flow {failed.id} (http://")
    assert attempt.error is not None and "certificate" in attempt.error.msg.lower()  # ended, not pending


def test_a_rewritten_flow_says_so(esrs, mitmdump, tmp_path) -> None:
    upstream = esrs(Plaintext.ALERT)
    saved = tmp_path / "flows.mitm"
    args, (port,) = reverse_modes([f"http://127.0.0.1:{upstream.port}"])
    m = mitmdump([*args, "--set", "esrs_rewrite=true", "-w", str(saved)])
    assert exchange(("127.0.0.1", port), b"GET / HTTP/1.1\r\nHost: esrs\r\n\r\n", 20).status == 200
    m.stop()
    (flow,) = read_flows(saved)
    assert flow.marked == REWRITTEN_MARKER
    assert flow.comment == f"esrs-fix: rewritten to a synthetic 200; plaintext got {SUMMARY}"


@pytest.fixture
def h2_nginx(cert, tmp_path) -> Iterator[int]:
    """Debian's nginx with TLS and HTTP/2 on a free loopback port (its plaintext answer: the 400 page); its port."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx is not installed (.ci/run installs it)")
    port = servers.free_port()
    d = tmp_path / "nginx"
    d.mkdir()
    (d / "index.html").write_text("hello over h2\n")
    temp = " ".join(f"{k}_temp_path {d / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (d / "nginx.conf").write_text(
        f"daemon off; master_process off; pid {d / 'nginx.pid'}; error_log stderr notice;\n"
        "events { worker_connections 64; }\n"
        f"http {{ access_log off; {temp}\n"
        f"  server {{ listen 127.0.0.1:{port} ssl http2; ssl_certificate {cert[0]}; ssl_certificate_key {cert[1]};"
        f" root {d}; index index.html; default_type text/plain; }} }}\n"
    )
    log = open(d / "nginx.log", "wb")  # noqa: SIM115 - closed below, after the process
    process = subprocess.Popen([nginx, "-e", "stderr", "-p", str(d), "-c", str(d / "nginx.conf")], stderr=log)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                exchange(("127.0.0.1", port), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"nginx did not start: {(d / 'nginx.log').read_text()}")
                time.sleep(0.1)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)  # our own process, by its id
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


@pytest.mark.parametrize("option", ["esrs_upgrade", "esrs_rewrite"])
def test_http2_clients_get_the_label_lowercase_with_no_log_line(h2_nginx, cert, mitmdump, curl, option) -> None:
    """curl --http2 through reverse mode (a TLS client) to an nginx that speaks HTTP/2: the upgraded and learned
    answers are HTTP/2 ones, whose upper-case label mitmproxy would lowercase with a log line each time."""
    args, (port,) = reverse_modes([f"http://127.0.0.1:{h2_nginx}"])
    m = mitmdump([*args, "--set", f"{option}=true", "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}"])
    labels = []
    for _ in range(2):  # the upgrade, then the learned request (two rewrites with esrs_rewrite)
        done = subprocess.run(
            [curl, "-sk", "--http2", "-D-", "-o/dev/null", "--max-time", "20", f"https://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.stdout.startswith("HTTP/2 200"), done.stdout + m.log_tail()
        labels += [line for line in done.stdout.splitlines() if line.lower().startswith("x-esrs-fix:")]
    m.stop()
    assert len(labels) == 2 and all(label.startswith("x-esrs-fix: ") for label in labels), labels
    log = m.log()
    assert log.count(LOWERCASED) == 0 and log.count(CONTENT_MISSING) == 0, log


def _rendered_with(**meta: object) -> str:
    from mitmproxy.test import tflow

    from stray_tls.core.names import METADATA_KEY
    from stray_tls.mitm import contentview

    f = tflow.tflow(resp=True)
    assert f.response is not None
    f.metadata[METADATA_KEY] = {"summary": SUMMARY, "kind": "tls_records", "confidence": "high", **meta}
    return contentview.render(b"esrs-fix's answer", f, f.response) or ""


def test_the_view_says_when_the_record_kept_only_part_of_the_bytes_or_none() -> None:
    """A record keeps the first RAW_BYTES of the plaintext attempt's answer, and none for a flow answered with a
    remembered failure: the view says how many there were, not the kept count as if it were all."""
    whole = _rendered_with(raw_hex="1503010002020a", raw_truncated=0)
    assert "what the plaintext attempt got (7 bytes):\n  15 03 01 00 02 02 0a\n" in whole
    cut = _rendered_with(raw_hex="1503010002020a", raw_truncated=1100)
    assert "what the plaintext attempt got (1107 bytes; the record keeps the first 7):\n  15 03 01" in cut
    remembered = _rendered_with(
        raw_hex="", raw_truncated=7, same_as="f-1", upgrade_error="certificate verification failed: x"
    )
    assert "what the plaintext attempt got (7 bytes; flow f-1's record has them):" in remembered
    assert "(not kept in this flow's record)" in remembered and "(no bytes)" not in remembered
    assert "; upgrade failed\n" in remembered  # the action line: not "not rewritten"
