"""esrs-fix for mitmproxy: `mitmdump -s addon/esrs_fix.py` (or mitmweb / mitmproxy with the same -s).

Spots upstream answers that are TLS records where HTTP was expected, decodes and explains them, and
rewrites them into a labelled synthetic status only when asked (`--set esrs_rewrite=true`).
The code lives in the `stray_tls` package beside this file (or installed with pip). Copied alone, this file
cannot work: it says so in one line at error level (mitmproxy then stops at start-up), and names the single
file that can (`esrs-fix bundle`).
"""

import logging
import sys
from pathlib import Path

_here = str(Path(__file__).resolve().parent)
if _here not in sys.path:  # a plain checkout: the package sits beside this script
    sys.path.insert(0, _here)

log = logging.getLogger("esrs_fix")

try:
    import stray_tls
except ModuleNotFoundError as e:
    if e.name != "stray_tls":
        raise
    # A sentence, not a traceback: mitmproxy's errorcheck still exits 1 on an error logged at start-up.
    log.error(
        "esrs-fix: cannot load: its package, stray_tls, is neither beside %s nor installed for mitmproxy's Python "
        "(%s). Either take the single file, which needs nothing but mitmproxy (`esrs-fix bundle -o esrs_fix.py` "
        "in a checkout or wherever esrs-fix is installed, then `mitmdump -s esrs_fix.py`), or `pip install "
        "esrs-fix` (in a checkout: `pip install .`) into mitmproxy's Python and run "
        '`mitmdump -s "$(esrs-fix path)"`.',
        Path(__file__).resolve(),
        sys.executable,
    )
    addons: list[object] = []
else:
    from stray_tls.mitm.addon import EsrsFix, as_script

    log.info("esrs-fix %s loaded from %s", stray_tls.__version__, Path(stray_tls.__file__).parent)
    addons = [EsrsFix()]  # its parts, one concern each, are called in order by it
    as_script(globals())
