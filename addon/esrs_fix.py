"""esrs-fix for mitmproxy: `mitmdump -s addon/esrs_fix.py` (or mitmweb / mitmproxy with the same -s).

Spots upstream answers that are TLS records where HTTP was expected, decodes and explains them, and
rewrites them into a labelled synthetic status only when asked (`--set esrs_rewrite=true`).
The code lives in the `stray_tls` package beside this file (or installed with pip).
"""

import sys
from pathlib import Path

_here = str(Path(__file__).resolve().parent)
if _here not in sys.path:  # a plain checkout: the package sits beside this script
    sys.path.insert(0, _here)

from stray_tls.addon import EsrsFix  # noqa: E402

addons = [EsrsFix()]
