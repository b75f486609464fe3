"""The value parsers of the backend's settings: raw environment string -> value.

Each parser takes the raw string of one variable and returns the parsed value (``str``, ``bool``,
``int``/``float`` within a range, a URL without credentials, a tuple of host names or CIDR networks,
``"auto"`` or a number of sources, a device name, ...) or raises ``ValueError`` with a short reason,
which :meth:`ml_backend.settings.Settings.from_env` collects into one
:class:`ml_backend.settings.SettingsError`. The declarations that use them are
:data:`ml_backend.settings.SETTINGS`. :func:`redact` hides URL credentials in messages,
:func:`is_loopback_host` tells whether ``HOST`` stays on this machine.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Callable, Optional, Tuple, Union
from urllib.parse import urlparse

# ------------------------------------------------------------------------------------------------
# parsers: raw string -> value, raising ValueError with a short reason
# ------------------------------------------------------------------------------------------------


def _str(raw: str) -> str:
    return raw.strip()


def _opt_str(raw: str) -> Optional[str]:
    return raw.strip() or None


def _bool(raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true/false (1/0, yes/no, on/off)")


def _int_range(lo: Optional[int] = None, hi: Optional[int] = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            v = int(raw.strip().replace("_", ""))
        except ValueError:
            raise ValueError("expected an integer") from None
        if lo is not None and v < lo:
            raise ValueError(f"must be >= {lo}")
        if hi is not None and v > hi:
            raise ValueError(f"must be <= {hi}")
        return v

    return parse


def _float_range(lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False,
                 hi_open: bool = False) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            v = float(raw.strip())
        except ValueError:
            raise ValueError("expected a number") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("expected a finite number")
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise ValueError(f"must be {'>' if lo_open else '>='} {lo}")
        if hi is not None and (v > hi or (hi_open and v == hi)):
            raise ValueError(f"must be {'<' if hi_open else '<='} {hi}")
        return v

    return parse


def redact(raw: str) -> str:
    """``http://user:pw@host/x`` -> ``http://<credentials>@host/x`` (for error messages)."""
    return re.sub(r"(?<=://)[^/@\s]*@", "<credentials>@", raw)


def _url(raw: str) -> str:
    v = raw.strip().rstrip("/")
    if not v:
        return ""
    try:
        p = urlparse(v)
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if p.scheme not in ("http", "https") or not p.netloc:
        raise ValueError("must start with http:// or https:// and name a host, e.g. http://label-studio:8080")
    if "@" in p.netloc:
        raise ValueError("must not contain credentials (user:password@): they would be sent to every "
                         "Label Studio request and shown in logs; the backend authenticates with "
                         "LABEL_STUDIO_API_KEY")
    if p.query or p.fragment:
        raise ValueError("must not have a query string or fragment")
    return v


def _hosts(raw: str) -> Tuple[str, ...]:
    out = []
    for part in raw.split(","):
        h = part.strip().lower()
        if not h:
            continue
        if "://" in h:  # tolerate full URLs: keep host[:port]
            h = urlparse(h).netloc
        if "@" in h:
            raise ValueError("host names must not contain credentials (user:password@)")
        if "/" in h or " " in h or not h:
            raise ValueError(f"{part.strip()!r} is not a host name (expected host or host:port)")
        out.append(h)
    return tuple(dict.fromkeys(out))


def _networks(raw: str) -> Tuple[str, ...]:
    out = []
    for part in raw.split(","):
        v = part.strip()
        if not v:
            continue
        try:
            net = ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"{v!r} is not a network (expected CIDR like 10.0.0.0/8 or an address)") from None
        out.append(str(net))
    return tuple(dict.fromkeys(out))


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.1``, ``::1``); False for ``0.0.0.0``."""
    h = host.strip().strip("[]").lower()
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _sources(raw: str) -> Union[str, int]:
    v = raw.strip().lower()
    if v == "auto":
        return "auto"
    try:
        n = int(v)
    except ValueError:
        raise ValueError('expected "auto" or an integer 1..16') from None
    if not 1 <= n <= 16:
        raise ValueError("number of sources must be within 1..16")
    return n


def _device(raw: str) -> str:
    v = raw.strip().lower()
    if v == "auto" or v == "cpu" or v == "mps" or v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise ValueError("expected cpu, cuda, cuda:N, mps or auto")


def _trainable(raw: str) -> str:
    v = raw.strip().lower()
    parts = [p.strip() for p in v.replace(",", "+").split("+") if p.strip()]
    allowed = {"adapter", "decoder", "encoder", "prompt", "all"}
    bad = [p for p in parts if p not in allowed]
    if not parts or bad:
        raise ValueError("expected parts joined by '+' from: adapter, decoder, encoder, prompt, all "
                         "(e.g. adapter+decoder)")
    return "+".join(parts)


#: What a pre-annotation's ``score`` holds (``SAFIRE_PREDICTION_SCORE``).
PREDICTION_SCORES = ("forgery", "uncertainty")


def _prediction_score(raw: str) -> str:
    v = raw.strip().lower()
    if v not in PREDICTION_SCORES:
        raise ValueError('expected "forgery" (the image-level forgery score) or "uncertainty" '
                         "(how unsure the model is of its answer)")
    return v


def _log_level(raw: str) -> str:
    v = raw.strip().upper()
    if v not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return v
