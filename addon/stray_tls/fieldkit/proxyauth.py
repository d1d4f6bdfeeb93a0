"""Proxy authentication for `esrs-fix check`: the schemes a 407 offers, the one a browser would pick, the tokens.

No sockets here (`diagnose.py` sends the requests): this module parses `Proxy-Authenticate`, orders the offers as a
browser does (Negotiate, NTLM, Basic), and makes each step's `Proxy-Authorization` value.  Basic is built in; NTLM
and Negotiate (SPNEGO: Kerberos where a ticket is at hand, NTLM inside it where none is) come from the optional
package pyspnego (the `ntlm` extra), imported only when a proxy asks for them; its Kerberos side needs
the packages gssapi and krb5 (the `auth` extra), which build against the system's Kerberos
(libkrb5-dev).

Single sign-on: without a user and password, a proxy that offers Negotiate gets the Kerberos ticket in the user's
cache (`kinit USER`, or the domain logon), as browsers and `curl --proxy-negotiate -U :` send it
(`Credentials.TICKET`). With a user and password, pyspnego gets a ticket with the password where it can (a realm it
finds a KDC for), and falls back to NTLM inside Negotiate where it cannot (`DOMAIN\\USER`).

The password stays in `Credentials`: nothing here formats it.  Every token sent for it (the Basic token, NTLM's
and Negotiate's answers to a challenge, which an offline attack could test passwords against) is remembered by the
credentials, and `Credentials.redact` takes each of them out of what a proxy echoes, as it takes out the password.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import functools
import html
import html.entities
import importlib
import re
import struct
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from .extras import install_hint

#: What to install for NTLM and Negotiate, said where a proxy asks for them and pyspnego is missing.
SPNEGO_PACKAGE = "pyspnego"


def spnego_install() -> str:
    """The command that installs pyspnego where esrs-fix runs (a checkout's `ntlm` extra, or the package)."""
    return install_hint("ntlm", SPNEGO_PACKAGE)


def kerberos_install() -> str:
    """The command that installs Kerberos for pyspnego (gssapi and krb5, built against libkrb5-dev) where esrs-fix
    runs (a checkout's `auth` extra, or the packages)."""
    return install_hint("auth", "pyspnego[kerberos]")


class Scheme(enum.StrEnum):
    NEGOTIATE = "Negotiate"
    NTLM = "NTLM"
    BASIC = "Basic"

    @property
    def connection_bound(self) -> bool:
        """NTLM and Negotiate authenticate the connection: each step must travel on the one kept-alive connection."""
        return self is not Scheme.BASIC


#: The order in which a browser picks among the schemes a proxy offers: the strongest first.
BROWSER_ORDER = (Scheme.NEGOTIATE, Scheme.NTLM, Scheme.BASIC)


def spnego_available() -> bool:
    """Whether pyspnego can be imported (NTLM and Negotiate need it)."""
    try:
        importlib.import_module("spnego")
    except ImportError:
        return False
    return True


def kerberos_available() -> bool:
    """Whether pyspnego can speak Kerberos here: its GSSAPI side needs the packages gssapi and krb5."""
    try:
        for module in ("spnego", "gssapi", "krb5"):
            importlib.import_module(module)
    except ImportError:
        return False
    return True


def gss_words(text: str) -> str:
    """A GSSAPI error in the words that say what failed: its minor status (`Server HTTP/x@R not found in Kerberos
    database`), without the major status's boilerplate and pyspnego's contexts; the text as it is otherwise."""
    said = " ".join(text.split())
    minor = re.search(r"Minor \(\d+\): (.+?)(?:, Context: .*)?$", said)
    return minor.group(1) if minor else said


def cached_ticket() -> tuple[str | None, str]:
    """The principal whose Kerberos ticket (a TGT) is in the default cache (`KRB5CCNAME`), or None and why not: no
    ticket, an expired one, the Kerberos packages missing."""
    if not kerberos_available():
        return None, f"Kerberos needs the Python packages gssapi and krb5: {kerberos_install()}"
    gssapi = importlib.import_module("gssapi")
    try:
        creds = gssapi.Credentials(usage="initiate")
        name, lifetime = str(creds.name), creds.lifetime
    except gssapi.exceptions.ExpiredCredentialsError:
        return None, "the Kerberos ticket in the cache has expired"
    except gssapi.exceptions.GSSError as e:  # GSSAPI's words: the minor status names the cache
        return None, "no Kerberos ticket in the cache: " + gss_words(str(e))
    if lifetime is not None and lifetime <= 0:
        return None, f"the Kerberos ticket of {name} in the cache has expired"
    return name, ""


# -- what the proxy offers ---------------------------------------------------------------------------------------

_CHALLENGE_START = re.compile(r"^\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?:\s+|$)(?!=)")
_PARAM = re.compile(r"^\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*=")


def challenges(values: list[str]) -> list[str]:
    """`Proxy-Authenticate` values -> one string per challenge (`Basic realm="x"`, `NTLM`, `Negotiate`)."""
    out: list[str] = []
    for value in values:
        # commas outside quoted strings separate challenges and their parameters
        pieces = re.findall(r'(?:[^,"]|"(?:[^"\\]|\\.)*")+', value)
        for piece in pieces:
            if _PARAM.match(piece) or not _CHALLENGE_START.match(piece):
                if out:
                    out[-1] += "," + piece
                continue
            out.append(piece.strip())
    return [" ".join(c.split()) for c in out]


def scheme_of(challenge: str) -> str:
    return challenge.split(None, 1)[0] if challenge else ""


def known(scheme: str) -> Scheme | None:
    """The scheme a challenge names, when esrs-fix check can speak it (case-insensitive, as RFC 9110 says)."""
    return next((s for s in Scheme if s.lower() == scheme.lower()), None)


def token_of(offered: list[str], scheme: Scheme) -> bytes | None:
    """The token that the challenge for `scheme` carries (`NTLM TlRMTVNT...`), decoded; None when it carries none or
    one that is not base64 (a bare `NTLM`: the proxy starts the exchange over, or refuses)."""
    for challenge in offered:
        name, _, rest = challenge.partition(" ")
        if known(name) is scheme and rest.strip():
            with contextlib.suppress(binascii.Error, ValueError):
                return base64.b64decode(rest.strip(), validate=True)
    return None


@dataclass(frozen=True)
class Offer:
    """What a 407 offers: its challenges as they came, the schemes esrs-fix check speaks among them (in the order a
    browser would try them), those it cannot speak here, and those it could with pyspnego installed."""

    offered: list[str]
    usable: list[Scheme]
    unsupported: list[str]
    need_spnego: list[Scheme]

    @classmethod
    def of(cls, offered: list[str], *, spnego: bool | None = None) -> Offer:
        spnego = spnego_available() if spnego is None else spnego
        names = list(dict.fromkeys(scheme_of(c) for c in offered))
        schemes = {known(n) for n in names} - {None}
        ordered = [s for s in BROWSER_ORDER if s in schemes]
        usable = [s for s in ordered if spnego or not s.connection_bound]
        need = [s for s in ordered if s not in usable]
        unsupported = [n for n in names if known(n) is None or known(n) in need]
        return cls(offered, usable, unsupported, need)


def shown_user(user: str) -> str:
    """A user name quoted for a sentence, as repr() quotes it but for a domain's backslash, which stays one
    (`'CORP\\bob'`, not repr's `'CORP\\\\bob'`)."""
    return repr(user).replace("\\\\", "\\")


# -- the credentials and what is sent for them -------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """A proxy user (`USER`, `DOMAIN\\USER` or `USER@DOMAIN`) and its password, which no repr, text or token
    leaves here in clear but the Basic token sent to the proxy that asked for it."""

    user: str
    password: str = field(repr=False)
    #: The tokens sent for these credentials (besides the Basic one): scrubbed from what is shown like the password.
    sent: list[str] = field(default_factory=list, repr=False, compare=False)

    @property
    def from_cache(self) -> bool:
        """No user, no password: the Kerberos ticket in the cache (`TICKET`), whose tokens alone are scrubbed."""
        return not self.user and not self.password

    @classmethod
    def ticket(cls) -> Credentials:
        """Single sign-on: the ticket in the cache, and the tokens sent for it (a Kerberos AP-REQ could be replayed
        for a few minutes: a page that echoes it shows `***`)."""
        return cls("", "")

    def header(self) -> str:
        return f"Proxy-Authorization: Basic {self._token().decode('ascii')}\r\n"

    def _pair(self) -> bytes:
        # surrogateescape: bytes that are not UTF-8 (from the environment, or %FF in the URL) go out as they came
        return f"{self.user}:{self.password}".encode("utf-8", "surrogateescape")

    def _token(self) -> bytes:
        return base64.b64encode(self._pair())

    def remember(self, token: str) -> None:
        """A token about to be sent for these credentials: from now on, `redact` takes it out too."""
        if token and token not in self.sent:
            self.sent.append(token)

    def redact_text(self, text: str) -> str:
        """`redact` for a text decoded as latin-1 from the bytes that came (a header's value)."""
        return self.redact(text.encode("latin-1", "replace")).decode("latin-1")

    def redact(self, data: bytes) -> bytes:
        """`data` with every form of the secret a proxy could echo replaced by `***`: the Basic token, the tokens
        sent for NTLM or Negotiate, the user:password pair and the password, each as is, percent-encoded or
        HTML-escaped (see `_secret_pattern`)."""
        for token in sorted(self.sent, key=len, reverse=True):
            for form in {token, urllib.parse.quote(token, safe=""), urllib.parse.quote(token, safe="").lower()}:
                data = data.replace(form.encode("ascii"), b"***")
        return self._secrets.sub(b"***", data)

    @functools.cached_property
    def _secrets(self) -> re.Pattern[bytes]:
        if self.from_cache:
            return re.compile(b"(?!)")  # nothing but the tokens sent
        secrets = [self._token().decode("ascii"), f"{self.user}:{self.password}", self.password]
        # longest first: the pair before the password inside it
        patterns = [_secret_pattern(s) for s in sorted(filter(None, secrets), key=len, reverse=True)]
        return re.compile(b"|".join(patterns))


def _secret_pattern(secret: str) -> bytes:
    """A regex for `secret` in any form a page may echo it in, character by character (a page may escape some
    characters and not others): as is (UTF-8 or latin-1), percent-encoded (UTF-8 or latin-1, hex digits in either
    case; `+` for a space), or as an HTML character reference that `html.unescape` reads (decimal, hexadecimal or
    named, with or without `;`: squid writes `'` as `&#39;`, others as `&apos;`)."""

    def either_case(hex_digits: str) -> bytes:
        return b"".join(f"[{d.upper()}{d.lower()}]".encode() if d.isalpha() else d.encode() for d in hex_digits)

    parts: list[bytes] = []
    for ch in secret:
        utf8 = ch.encode("utf-8", "surrogateescape")  # surrogateescape: bytes that are not UTF-8 stay those bytes
        forms: set[bytes] = {re.escape(utf8), b"".join(b"%" + either_case(f"{byte:02x}") for byte in utf8)}
        if not 0xDC80 <= ord(ch) <= 0xDCFF:  # a real character, not an escaped byte: its latin-1 and HTML forms
            with contextlib.suppress(UnicodeEncodeError):
                latin1 = ch.encode("latin-1")
                forms |= {re.escape(latin1), b"%" + either_case(f"{latin1[0]:02x}")}
            if ch == " ":
                forms.add(rb"\+")  # a form's encoding of a space
            # a numeric reference may end without `;` where no digit follows (html.unescape reads `&#39s` as `'s`),
            # and 128-159 stand for windows-1252's characters (`&#128;` is the euro sign)
            for code in {ord(ch)} | {c for c, v in getattr(html, "_invalid_charrefs", {}).items() if v == ch}:
                forms.add(b"&#0*%d(?:;|(?![0-9]))" % code)
                forms.add(b"&#[xX]0*" + either_case(f"{code:x}") + b"(?:;|(?![0-9a-fA-F]))")
            # named references, the legacy ones without `;` too (`&eacute` is read as `é`)
            forms |= {b"&" + re.escape(n.encode("ascii")) for n, c in html.entities.html5.items() if c == ch}
        longest_first: list[bytes] = sorted(forms, key=len, reverse=True)
        parts.append(b"(?:" + b"|".join(longest_first) + b")")
    return b"".join(parts)


def who(credentials: Credentials) -> str:
    """Whose credentials, for a sentence: `for user 'bob'`, or `with the Kerberos ticket in the cache`."""
    return (
        "with the Kerberos ticket in the cache"
        if credentials.from_cache
        else f"for user {shown_user(credentials.user)}"
    )


# -- one connection's exchange -----------------------------------------------------------------------------------


class AuthError(Exception):
    """This side cannot make the next token (pyspnego missing, a challenge it cannot read); a sentence, never a
    password."""


#: NTLM's negotiate flags (MS-NLMP 2.2.2.5): the text encodings of the messages.
_NTLM_UNICODE, _NTLM_OEM = 0x00000001, 0x00000002


def _unicode_only(challenge: bytes) -> bytes:
    """An NTLM CHALLENGE that sets both UNICODE and OEM, as squid's helpers do (they echo the client's flags), with
    OEM cleared: the server must choose one (MS-NLMP 3.2.5.1.1: UNICODE wins), and pyspnego would otherwise copy both
    into its AUTHENTICATE, whose names squid then reads as OEM text and refuses. A Windows server always chooses."""
    if len(challenge) < 24 or not challenge.startswith(b"NTLMSSP\x00\x02\x00\x00\x00"):
        return challenge
    (flags,) = struct.unpack_from("<I", challenge, 20)
    if flags & _NTLM_UNICODE and flags & _NTLM_OEM:
        return challenge[:20] + struct.pack("<I", flags & ~_NTLM_OEM) + challenge[24:]
    return challenge


def _ntlm_inside(token: bytes) -> bytes:
    """The NTLM message inside a Negotiate token (raw, or in SPNEGO's responseToken), OEM cleared as above."""
    at = token.find(b"NTLMSSP\x00\x02\x00\x00\x00")
    if at <= 0:
        return _unicode_only(token)
    return token[:at] + _unicode_only(token[at:])


class AuthHandshake:
    """One connection's authentication in `scheme`: `first()` is the first `Proxy-Authorization` value, `answer()`
    the one that answers the proxy's challenge (NTLM's AUTHENTICATE, the next SPNEGO token).

    Every value but NTLM's NEGOTIATE (which holds no secret) is remembered by the credentials for scrubbing.
    """

    def __init__(self, scheme: Scheme, credentials: Credentials, proxy_host: str) -> None:
        self.scheme = scheme
        self.credentials = credentials
        self._context: Any = None
        if scheme.connection_bound:
            try:
                spnego = importlib.import_module("spnego")
            except ImportError:
                raise AuthError(f"{scheme} needs the Python package {SPNEGO_PACKAGE}: {spnego_install()}") from None
            try:
                self._context = spnego.client(
                    credentials.user or None,  # none: the ticket in the cache (single sign-on)
                    credentials.password or None,
                    hostname=proxy_host,
                    service="HTTP",
                    protocol=scheme.lower(),
                )
            except Exception as e:  # pyspnego's own errors, and whatever it raises for input it refuses
                raise AuthError(self._said("could not start", e)) from None

    def _said(self, what: str, e: Exception) -> str:
        text = gss_words(str(e)) or type(e).__name__
        return f"{what} {self.scheme} {who(self.credentials)}: {self.credentials.redact_text(text)}"

    @property
    def mechanism(self) -> str | None:
        """What Negotiate carried: `Kerberos`, or `NTLM` (inside it); None for the other schemes."""
        if self.scheme is not Scheme.NEGOTIATE or self._context is None:
            return None
        with contextlib.suppress(Exception):  # pyspnego's own errors: the mechanism is then not known
            protocol = str(self._context.negotiated_protocol or "")
            return {"kerberos": "Kerberos", "ntlm": "NTLM"}.get(protocol.lower(), protocol or None)
        return None

    def first(self) -> str:
        if not self.scheme.connection_bound:
            return f"Basic {self.credentials._token().decode('ascii')}"
        return self._value(None, remember=self.scheme is Scheme.NEGOTIATE)

    def answer(self, challenge: bytes) -> str:
        if not self.scheme.connection_bound:
            raise AuthError("Basic has no second step")
        return self._value(_ntlm_inside(challenge), remember=True)

    def _value(self, challenge: bytes | None, *, remember: bool) -> str:
        try:
            token = self._context.step(challenge)
        except Exception as e:  # a challenge pyspnego cannot read, or a Kerberos failure: a sentence
            what = "could not start" if challenge is None else "could not answer the proxy's challenge in"
            raise AuthError(self._said(what, e)) from None
        if not token:
            raise AuthError(f"{self.scheme}: nothing to send in answer to the proxy's challenge")
        value = base64.b64encode(token).decode("ascii")
        if remember:
            self.credentials.remember(value)
        return f"{self.scheme} {value}"
