"""Container health probe for the pmstore image: GET /healthz on the configured port.

Exit 0 when the server answers 200, 1 otherwise (docker's HEALTHCHECK contract). Reads
PMSTORE_HOST/PMSTORE_PORT as `pmstore serve` does; a wildcard bind is probed on loopback.
Standard library only: the image has no curl.
"""

import os
import sys
import urllib.request

host = os.environ.get("PMSTORE_HOST", "127.0.0.1")
if host in ("", "0.0.0.0", "::"):
    host = "127.0.0.1"
if ":" in host:
    host = f"[{host}]"
url = f"http://{host}:{os.environ.get('PMSTORE_PORT', '8080')}/healthz"
try:
    with urllib.request.urlopen(url, timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception as e:  # any failure is "unhealthy"; say why in the health log
    print(f"{url}: {e}", file=sys.stderr)
    sys.exit(1)
