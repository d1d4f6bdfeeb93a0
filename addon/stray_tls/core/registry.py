"""IANA TLS registries, as tables (pure data, no I/O).

Sources: IANA "Transport Layer Security (TLS) Parameters": TLS ContentType, TLS Alerts, TLS HandshakeType;
RFC 6101 (SSL 3.0) and the SSL 2.0 draft for the SSLv2 message and error codes.  Alert names are spelled the
way the registry spells them, `_RESERVED` suffixes included, so that a log line can be searched for verbatim;
handshake types use their RFC 5246 / RFC 8446 names, since TLS 1.2 servers still send the "reserved" ones.
"""

from __future__ import annotations

CONTENT_TYPES: dict[int, str] = {
    20: "change_cipher_spec",
    21: "alert",
    22: "handshake",
    23: "application_data",
    24: "heartbeat",
    25: "tls12_cid",
    26: "ack",
    27: "return_routability_check",
}

#: The complete TLS Alerts registry; every other value in 0..255 is unassigned.
ALERT_DESCRIPTIONS: dict[int, str] = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    21: "decryption_failed_RESERVED",
    22: "record_overflow",
    30: "decompression_failure_RESERVED",
    40: "handshake_failure",
    41: "no_certificate_RESERVED",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    52: "too_many_cids_requested",
    60: "export_restriction_RESERVED",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    100: "no_renegotiation_RESERVED",
    109: "missing_extension",
    110: "unsupported_extension",
    111: "certificate_unobtainable_RESERVED",
    112: "unrecognized_name",
    113: "bad_certificate_status_response",
    114: "bad_certificate_hash_value_RESERVED",
    115: "unknown_psk_identity",
    116: "certificate_required",
    117: "general_error",
    120: "no_application_protocol",
    121: "ech_required",
}

ALERT_LEVELS: dict[int, str] = {1: "warning", 2: "fatal"}

HANDSHAKE_TYPES: dict[int, str] = {
    0: "hello_request",
    1: "client_hello",
    2: "server_hello",
    3: "hello_verify_request",
    4: "new_session_ticket",
    5: "end_of_early_data",
    6: "hello_retry_request",
    8: "encrypted_extensions",
    9: "request_connection_id",
    10: "new_connection_id",
    11: "certificate",
    12: "server_key_exchange",
    13: "certificate_request",
    14: "server_hello_done",
    15: "certificate_verify",
    16: "client_key_exchange",
    17: "client_certificate_request",
    20: "finished",
    21: "certificate_url",
    22: "certificate_status",
    23: "supplemental_data",
    24: "key_update",
    25: "compressed_certificate",
    26: "ekt_key",
    254: "message_hash",
}

PROTOCOL_VERSIONS: dict[int, str] = {
    0x0002: "SSL 2.0",
    0x0300: "SSL 3.0",
    0x0301: "TLS 1.0",
    0x0302: "TLS 1.1",
    0x0303: "TLS 1.2",
    0x0304: "TLS 1.3",
    0xFEFF: "DTLS 1.0",
    0xFEFD: "DTLS 1.2",
    0xFEFC: "DTLS 1.3",
}

SSL2_MESSAGE_TYPES: dict[int, str] = {
    0: "error",
    1: "client_hello",
    2: "client_master_key",
    3: "client_finished",
    4: "server_hello",
    5: "server_verify",
    6: "server_finished",
    7: "request_certificate",
    8: "client_certificate",
}

SSL2_ERRORS: dict[int, str] = {
    0x0001: "no_cipher",
    0x0002: "no_certificate",
    0x0004: "bad_certificate",
    0x0006: "unsupported_certificate_type",
}


def alert_description_name(code: int) -> str:
    """The registry name of an alert description; `unassigned` for a number the registry leaves free."""
    return ALERT_DESCRIPTIONS.get(code, "unassigned")


def version_name(version: int) -> str:
    """`TLS 1.0` for 0x0301; an unknown value is shown as hex (`0x0305`), never an error."""
    return PROTOCOL_VERSIONS.get(version, f"0x{version:04x}")
