"""Test launcher: ``python tests/security_server.py [safire serve options]`` runs ``safire serve``
with two test-only hooks, for tests/test_security.py:

* a hosts table: names in ``SAFIRE_TEST_RESOLVE`` (JSON ``{"name": ["address", ...]}``) resolve to
  the given addresses inside this process (``ml_backend.netguard.resolve`` is replaced), other
  ``*.test`` names do not resolve, everything else resolves normally;
* a tripwire on ``socket.connect``: a connection attempt to a link-local or cloud metadata address
  prints ``SECURITY-TEST: connect attempted to <address>`` on stderr and fails, so a test can prove
  that such an address was refused *before* any connection was attempted (nothing ever reaches
  169.254.169.254 from a test).

Nothing here is imported by the backend itself.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ml_backend import netguard  # noqa: E402

_TABLE = {k.lower(): [ipaddress.ip_address(a) for a in v]
          for k, v in json.loads(os.environ.get("SAFIRE_TEST_RESOLVE", "{}")).items()}
_real_resolve = netguard.resolve


def _resolve(host: str, port: int):
    h = host.strip("[]").lower().rstrip(".")
    if h in _TABLE:
        return list(_TABLE[h])
    if h.endswith(".test"):
        raise socket.gaierror(socket.EAI_NONAME, f"{h} does not resolve (test hosts table)")
    return _real_resolve(host, port)


netguard.resolve = _resolve

_real_connect = socket.socket.connect


def _connect(self: socket.socket, address):  # type: ignore[no-untyped-def]
    try:
        ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
    except (ValueError, TypeError, IndexError):
        ip = None
    if ip is not None and (ip.is_link_local or ip in netguard.METADATA_ADDRESSES):
        print(f"SECURITY-TEST: connect attempted to {ip}", file=sys.stderr, flush=True)
        raise OSError("tests/security_server.py: connection to a metadata/link-local address blocked")
    return _real_connect(self, address)


socket.socket.connect = _connect  # type: ignore[method-assign]

if __name__ == "__main__":
    from ml_backend.serve import main

    sys.exit(main(sys.argv[1:]))
