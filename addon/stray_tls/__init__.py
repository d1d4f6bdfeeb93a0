"""stray_tls: find TLS records where HTTP was expected (the esrs-fix toolkit).

Pure decoding lives in `records` and `findings` (no mitmproxy import); the mitmproxy addon in `addon`;
everything that names mitmproxy's internals in `compat`.
"""

__version__ = "0.1.0"
