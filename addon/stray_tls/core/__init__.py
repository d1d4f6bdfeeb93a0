"""The shared core: TLS registries and the record decoder, findings, the wording, and the pure readers of
frames, HTTP/1 and pasted text. No mitmproxy, no I/O.
"""
