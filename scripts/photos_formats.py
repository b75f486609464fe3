"""File formats the photo finders of ``scripts/install_photos.py`` read: Debian DEP-5 copyright
files (per-file licence, :class:`Copyright`), Qt binary resources (:func:`read_rcc`) and the JPEG
entries of Enlightenment's Eet / ``.edj`` files (:func:`read_eet_jpegs`).
"""

from __future__ import annotations

import fnmatch
import os
import re
import struct
import zlib
from typing import Dict, List, Tuple


# ---------------------------------------------------------------------------------------------
# Debian copyright files (machine-readable format): per-file licence
# ---------------------------------------------------------------------------------------------

class Copyright:
    """``Files:`` stanzas of a DEP-5 copyright file; the last matching stanza wins."""

    def __init__(self, text: str = ""):
        self.stanzas: List[Tuple[List[str], str, str]] = []
        for para in re.split(r"\n\s*\n", text):
            fields: Dict[str, str] = {}
            key = None
            for line in para.splitlines():
                if line[:1] in (" ", "\t") and key:
                    fields[key] += "\n" + line.strip()
                elif ":" in line:
                    key, _, val = line.partition(":")
                    key = key.strip().lower()
                    fields[key] = val.strip()
            if "files" in fields:
                pats = fields["files"].split()
                lic = fields.get("license", "").split("\n")[0].strip()
                cop = fields.get("copyright", "").split("\n")[0].strip()
                url = fields.get("comment", "").split("\n")[0].strip()
                if url.startswith("http"):  # where the file came from (e.g. Wikimedia Commons)
                    cop = f"{cop} ({url})" if cop else url
                self.stanzas.append((pats, lic, cop))

    @classmethod
    def of(cls, root: str, package: str) -> "Copyright":
        p = os.path.join(root, "usr", "share", "doc", package, "copyright")
        if not os.path.isfile(p):
            return cls()
        with open(p, encoding="utf-8", errors="replace") as f:
            return cls(f.read())

    def lookup(self, *paths: str) -> Tuple[str, str]:
        """(licence, copyright) of the first of ``paths`` matched by a stanza other than
        ``*`` (last stanza wins), else of the ``*`` stanza."""
        for path in paths:
            hit = None
            for pats, lic, cop in self.stanzas:
                if any(p != "*" and fnmatch.fnmatchcase(path, p) for p in pats):
                    hit = (lic, cop)
            if hit:
                return hit
        for pats, lic, cop in self.stanzas:
            if "*" in pats:
                return f"{lic} (package-wide)", cop
        return "", ""


# ---------------------------------------------------------------------------------------------
# Qt resource (.rcc) reader: format versions 1-3
# ---------------------------------------------------------------------------------------------

def read_rcc(blob: bytes) -> List[Tuple[str, bytes]]:
    """All files of a Qt binary resource (``rcc -binary``) as ``(path, data)``.

    Layout: ``"qres"``, version, tree / data / names offsets (big-endian uint32; version 3 adds
    a flags word). Tree nodes: name offset (4), flags (2), then for directories child count and
    first child index (4 + 4), for files country + language (2 + 2) and data offset (4); version
    >= 2 appends a 64-bit modification time. Names: length (2), hash (4), UTF-16BE. Data: size
    (4) then the bytes; flag 1 = zlib (``qCompress``: 4-byte big-endian length prefix), flag 4 =
    zstd (decoded when the ``zstandard`` module is available, else skipped).
    """
    if blob[:4] != b"qres":
        raise ValueError("not a Qt rcc file")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    if version not in (1, 2, 3):
        raise ValueError(f"unsupported rcc version {version}")
    node = 14 + (8 if version >= 2 else 0)

    def name_at(off: int) -> str:
        (n,) = struct.unpack(">H", blob[names + off:names + off + 2])
        return blob[names + off + 6:names + off + 6 + 2 * n].decode("utf-16-be")

    out: List[Tuple[str, bytes]] = []
    stack = [(0, "")]
    while stack:
        idx, prefix = stack.pop()
        p = tree + idx * node
        noff, flags = struct.unpack(">IH", blob[p:p + 6])
        path = prefix + "/" + name_at(noff) if idx else ""
        if flags & 0x02:
            count, first = struct.unpack(">II", blob[p + 6:p + 14])
            stack.extend((c, path) for c in range(first + count - 1, first - 1, -1))
            continue
        (doff,) = struct.unpack(">I", blob[p + 10:p + 14])
        q = data + doff
        (size,) = struct.unpack(">I", blob[q:q + 4])
        payload = blob[q + 4:q + 4 + size]
        if flags & 0x01:
            payload = zlib.decompress(payload[4:])
        elif flags & 0x04:
            try:
                import zstandard  # type: ignore
            except ImportError:
                continue
            payload = zstandard.ZstdDecompressor().decompress(payload)
        out.append((path, payload))
    out.sort()
    return out


# ---------------------------------------------------------------------------------------------
# Enlightenment Eet (.edj) reader: the plain-JPEG entries
# ---------------------------------------------------------------------------------------------

def read_eet_jpegs(blob: bytes) -> List[Tuple[str, bytes]]:
    """The plain-JPEG entries of an Eet file (what Edje ``.edj`` themes are): ``(key, data)``.

    Eet v2 layout (magic ``0x1ee70f42``): entry count, dictionary count, then per entry six
    big-endian int32: offset, size, data size, name offset, name size, flags. Images stored
    "lossy" without alpha are plain JPEG streams (``FF D8``) in uncompressed entries; other
    entries (lossless or compressed images, scripts, ...) are ignored.
    """
    if len(blob) < 12 or struct.unpack(">I", blob[:4])[0] != 0x1EE70F42:
        raise ValueError("not an Eet v2 file")
    n, _ = struct.unpack(">ii", blob[4:12])
    out = []
    for i in range(n):
        off, size, dsize, noff, nsize, flags = struct.unpack(">6i", blob[12 + 24 * i:36 + 24 * i])
        data = blob[off:off + size]
        if size == dsize and data[:3] == b"\xff\xd8\xff":
            out.append((blob[noff:noff + nsize].rstrip(b"\0").decode("utf-8", "replace"), data))
    return out
