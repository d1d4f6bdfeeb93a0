"""Bounded and clean output against hostile peers (issue 22, item 8): real mitmdump, loopback.

An upstream answering with the alert repeated 9,000 times gets the client a 502 whose head curl reads, one report
line of a few KB and a log line of one or two; a remembered failure writes a short line per request, naming the
flow whose line holds the records; a Host header cannot draw on the terminal through esrs-fix's log lines; a Host
header that is not UTF-8 is reported, in valid UTF-8 JSON.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from stray_tls.core import findings, records
from stray_tls.fieldkit.wire import Answer, exchange
from stray_tls.lab import servers
from stray_tls.lab.mitm import Mitmdump
from stray_tls.mitm.responses import LABEL_CHARS

from .conftest import FIELD_ALERT, reverse_modes

pytestmark = pytest.mark.e2e

TIMEOUT = 20.0  # a bound on each client, not a speed claim
#: The flood: the field alert 9,000 times (63 KB), as a hostile or broken upstream may answer.
FLOOD_COUNT = 9000
FLOOD = FIELD_ALERT * FLOOD_COUNT
#: The caps this file holds esrs-fix to (the README's figures, with room for the fixed words around them).
LABEL_MAX = LABEL_CHARS + 64
REPORT_LINE_MAX = 8 * 1024
LOG_LINE_MAX = 2 * 1024
#: A remembered failure's line: no records, no raw bytes.
REMEMBERED_LINE_MAX = 2 * 1024
SPOOF_HOST = b"x\x1b[2K\r[00:00:00.000] esrs-fix: learned evil.example:443"


def request(port: int, host: bytes = b"localhost", target: bytes = b"/") -> Answer:
    """A plaintext GET with exactly these Host bytes (curl refuses control bytes in a header)."""
    head = b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    return exchange(("127.0.0.1", port), head, TIMEOUT)


def regular(mitmdump, server: servers.TCPServer, *options: str) -> tuple[Mitmdump, int, bytes]:
    """mitmdump in regular mode, where the logged URL is made from the Host header; the absolute URL to `server`."""
    port = servers.free_port()
    m = mitmdump(["-p", str(port), *(a for o in options for a in ("--set", o))])
    return m, port, f"http://127.0.0.1:{server.port}/".encode()


def report_lines(path: Path) -> list[dict]:
    data = path.read_bytes() if path.exists() else b""
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]  # strict UTF-8: raises if invalid


def esrs_lines(log: bytes) -> list[bytes]:
    return [line for line in log.split(b"\n") if b"esrs-fix:" in line]


def test_a_flood_of_records_gets_a_small_label_report_line_and_log_line(esrs, mitmdump, curl, tmp_path) -> None:
    server = esrs(alert=FLOOD)
    report = tmp_path / "report.jsonl"
    args, (port,) = reverse_modes([f"http://127.0.0.1:{server.port}"])
    m = mitmdump([*args, "--set", f"esrs_report={report}"])
    done = subprocess.run(
        [curl, "-sS", "-o", "/dev/null", "-D", "-", "--max-time", str(TIMEOUT), f"http://127.0.0.1:{port}/"],
        capture_output=True,
        timeout=TIMEOUT + 5,
    )
    assert done.returncode == 0, done.stderr  # curl read the whole head
    head = done.stdout.decode("latin-1")
    assert head.startswith("HTTP/1.1 502")
    label = next(line for line in head.splitlines() if line.lower().startswith("x-esrs-fix:"))
    # The answer is judged on the records read when it is detected: all 9,000, or the first reads' worth when the
    # flood arrives in pieces (seen under load); either way far more than the label, report and log may list.
    counted = re.search(r"; and (\d+) more records \((\d+) in all\)", label)
    assert counted is not None, label
    omitted, seen = int(counted[1]), int(counted[2])
    assert 100 <= seen <= FLOOD_COUNT and omitted == seen - records.DESCRIBED_RECORDS
    assert len(label) < LABEL_MAX
    (line,) = report.read_bytes().splitlines()
    assert len(line) < REPORT_LINE_MAX
    entry = json.loads(line)
    assert len(entry["records"]) == findings.LISTED_RECORDS
    assert entry["records_omitted"] == seen - findings.LISTED_RECORDS
    assert len(entry["raw_hex"]) == 2 * findings.RAW_BYTES
    assert entry["raw_truncated"] + findings.RAW_BYTES >= seen * len(FIELD_ALERT)  # every record's bytes counted
    logged = esrs_lines(m.log_path.read_bytes())
    assert logged and max(len(x) for x in logged) < LOG_LINE_MAX


def test_a_remembered_failure_writes_a_short_line_per_request(esrs, mitmdump, tmp_path) -> None:
    """esrs_upgrade on, the TLS port's certificate untrusted: the first request's TLS attempt fails and is remembered;
    the next requests within esrs_upgrade_retry_after are answered unsent, each with a short line."""
    server = esrs(alert=FLOOD)
    report = tmp_path / "report.jsonl"
    args, (port,) = reverse_modes([f"http://127.0.0.1:{server.port}"])
    mitmdump(
        [*args, "--set", "esrs_upgrade=true", "--set", "esrs_upgrade_retry_after=600", "--set", f"esrs_report={report}"]
    )
    first = request(port)
    assert first.status == 502 and (first.label or "").startswith("upgrade failed: certificate verification failed")
    size = report.stat().st_size
    more = 20
    for _ in range(more):
        answer = request(port)
        assert answer.status == 502 and len(answer.label or "") < LABEL_MAX
    assert server.plaintext_requests == 1 and server.tls_requests == 0  # the remembered ones were not sent
    lines = report_lines(report)
    assert len(lines) == 1 + more
    assert report.stat().st_size - size < more * REMEMBERED_LINE_MAX
    upstream, remembered = lines[0], lines[1:]
    assert upstream["records_omitted"] == FLOOD_COUNT - findings.LISTED_RECORDS and not upstream["remembered"]
    for entry in remembered:
        assert entry["remembered"] and entry["same_as"] == upstream["flow"]
        assert entry["records"] == [] and entry["raw_hex"] == "" and entry["raw_truncated"] == len(FLOOD)


def test_a_host_header_cannot_draw_on_the_terminal(esrs, mitmdump) -> None:
    server = esrs()
    m, port, url = regular(mitmdump, server)
    assert request(port, SPOOF_HOST, url).status == 502
    m.stop()  # every line written
    logged = esrs_lines(m.log_path.read_bytes())
    detection = [line for line in logged if b"answered by" in line]
    assert detection and b"\\x1b[2K\\x0d[00:00:00.000]" in detection[0]  # shown, escaped
    assert f"answered by 127.0.0.1:{server.port}".encode() in detection[0]  # where the connection went
    for line in logged:
        assert b"\x1b" not in line and b"\r" not in line, line


def test_a_host_that_is_not_utf8_is_reported_in_valid_json(esrs, mitmdump, tmp_path) -> None:
    server = esrs()
    report = tmp_path / "report.jsonl"
    m, port, url = regular(mitmdump, server, f"esrs_report={report}")
    assert request(port, b"bad\xffhost", url).status == 502
    assert request(port, b"localhost", url).status == 502
    m.stop()
    lines = report_lines(report)  # each line parses, and the file is valid UTF-8
    assert len(lines) == 2 and "bad\udcffhost" in lines[0]["url"]
    assert "cannot write the report" not in m.log()
    logged = esrs_lines(m.log_path.read_bytes())
    assert any(b"bad\\xffhost" in line for line in logged)


def test_an_upstreams_own_label_is_logged_escaped_and_short(start_server, mitmdump) -> None:
    """The rename warning quotes the upstream's header value: escaped, cut short, beside where the connection went."""
    value = b"a\x1b[2Kb" + b"x" * 20_000
    answer = b"HTTP/1.1 200 OK\r\nX-ESRS-Fix: " + value + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    server = start_server(servers.ScriptedServer(lambda head: answer, keep_alive=False))
    args, (port,) = reverse_modes([f"http://127.0.0.1:{server.port}"])
    m = mitmdump(args)
    got = request(port)
    assert got.status == 200 and got.body == b"ok" and got.label is None
    m.stop()
    (line,) = [x for x in esrs_lines(m.log_path.read_bytes()) if b"its own X-ESRS-Fix header" in x]
    assert len(line) < LOG_LINE_MAX and b"\x1b" not in line and b"\\x1b[2Kb" in line
    assert f"(127.0.0.1:{server.port})".encode() in line
