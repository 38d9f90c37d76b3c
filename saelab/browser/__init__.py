"""The feature browser: scan held-out text with an SAE and write a static folder to read its
latents in (``python browse.py <run folder>``; docs/browser.md).

    scan.py     one streamed pass: density, histograms, top-k contexts with shaded windows
    logits.py   output tokens a decoder direction promotes / suppresses (direct path)
    site.py     the static folder (index + per-chunk data files), written atomically
    build.py    run folder -> config -> scan -> logits -> site
"""

from saelab.browser.build import build_browser
from saelab.browser.logits import direction_logits
from saelab.browser.scan import LatentScanner, ScanResult, scan_latents
from saelab.browser.site import write_site
from saelab.targets import Target, resolve_target

__all__ = [
    "LatentScanner",
    "ScanResult",
    "Target",
    "build_browser",
    "direction_logits",
    "resolve_target",
    "scan_latents",
    "write_site",
]
