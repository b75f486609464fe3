"""Dataset readers: the safire-studio layout, SafireMS folders and binary image/mask pairs.

Every reader yields :class:`Item` records with the same conventions:

* ``image``: ``H x W x 3`` uint8 RGB (greyscale, palette, RGBA, CMYK and 16-bit images are
  converted; alpha is dropped);
* ``labels``: ``H x W`` uint8 source index, ``0`` = the largest/authentic source,
  ``1..K-1`` = other sources, :data:`IGNORE` (255) = unlabelled pixels;
* ``num_sources``: number of sources (``1`` = authentic).

Readers:

* :class:`SafireDataset` -- the folder layout of ``docs/dataset-format.md`` (``safire synth``,
  ``safire export``): labels from ``sources/``, else ``masks_safirems/``, else ``masks_binary/``.
* :class:`SafireMSDataset` -- SafireMS(-Expert) style: grey masks with value ``50*i`` = source
  ``i``, list file lines ``img,mask`` (``None`` = authentic) relative to the root.
* :class:`BinaryPairsDataset` -- CASIA-style binary pairs from a ``img,mask`` list file, an
  IMDL-BenCo JSON list ``[[img, mask], [img, "Negative"]]`` or an in-memory list.
* :func:`open_dataset` -- picks one of the above from a path.

Problems (missing or unreadable files, image/mask size mismatch) raise :class:`DatasetError`
naming the offending file.

The :class:`Item` record, :class:`DatasetError` and the file readers / decoders / list parser are
in :mod:`training.dataset_io` (re-exported here).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

# Item, DatasetError and the file readers / decoders: dataset_io. The public names stay importable
# from training.datasets (callers import them from here).
from .dataset_io import (  # noqa: F401 - re-exported
    IGNORE,
    DatasetError,
    Item,
    _fit_mask,
    _is_none_mask,
    _num_sources,
    _resolve,
    _stem,
    decode_binary,
    decode_safirems,
    read_image,
    read_mask,
    read_pair_list,
)

__all__ = [
    "IGNORE",
    "DatasetError",
    "Item",
    "SafireDataset",
    "SafireMSDataset",
    "BinaryPairsDataset",
    "open_dataset",
    "read_image",
    "read_mask",
    "decode_safirems",
    "decode_binary",
    "read_pair_list",
]

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------

class _Reader:
    """Common sequence behaviour; subclasses fill ``self._entries`` and implement ``_load``."""

    _entries: List[Any]

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i: int) -> Item:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, not {type(i).__name__}")
        n = len(self._entries)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} items")
        return self._load(self._entries[int(i) % n])

    def __iter__(self) -> Iterator[Item]:
        for i in range(len(self)):
            yield self[i]

    def _load(self, entry: Any) -> Item:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def names(self) -> List[str]:
        return [self._name(e) for e in self._entries]

    def _name(self, entry: Any) -> str:
        return _stem(entry[0])


class SafireDataset(_Reader):
    """The safire-studio dataset layout (``docs/dataset-format.md``).

    Args:
        root: the ``DATASET/`` folder.
        split: ``None`` (all samples), a split name (reads ``splits/NAME.txt``) or the path of a
            file with one sample name per line.
        resize_mismatched: resize masks whose size differs from the image (nearest) instead of
            raising.
        exif_transpose: apply the image's EXIF orientation (off: raw pixel order).

    Samples come from ``list.txt`` (first column) if present, else from the files in ``images/``.
    Labels come from ``sources/NAME.png`` (index mask, 255 = ignore), else
    ``masks_safirems/NAME.png`` (50*i), else ``masks_binary/NAME.png`` (>127); a sample whose
    list line says ``None`` and has no mask file is authentic (all 0).
    """

    def __init__(self, root: str, split: Optional[str] = None, *,
                 resize_mismatched: bool = False, exif_transpose: bool = False):
        if not os.path.isdir(root):
            raise DatasetError(f"dataset folder not found: {root}")
        self.root = os.path.abspath(root)
        self.resize_mismatched = resize_mismatched
        self.exif_transpose = exif_transpose
        self.manifest: Dict[str, Any] = {}
        mpath = os.path.join(self.root, "manifest.json")
        if os.path.isfile(mpath):
            try:
                with open(mpath, "r", encoding="utf-8") as f:
                    self.manifest = json.load(f)
            except (OSError, ValueError) as e:
                raise DatasetError(f"cannot parse {mpath}: {e}") from e
        entries: List[Tuple[str, Optional[str], bool]] = []  # (image rel, mask rel, listed None)
        lpath = os.path.join(self.root, "list.txt")
        if os.path.isfile(lpath):
            for img, mask, _extra in read_pair_list(lpath):
                entries.append((img, mask, mask is None))
        else:
            idir = os.path.join(self.root, "images")
            if not os.path.isdir(idir):
                raise DatasetError(f"{self.root} has neither list.txt nor images/")
            for fn in sorted(os.listdir(idir)):
                if fn.lower().endswith(_IMAGE_EXTS):
                    entries.append((os.path.join("images", fn), None, False))
        if split is not None:
            spath = split if os.path.isfile(split) else os.path.join(self.root, "splits",
                                                                     f"{split}.txt")
            if not os.path.isfile(spath):
                raise DatasetError(f"split file not found: {spath}")
            with open(spath, "r", encoding="utf-8") as f:
                wanted = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
            by_name = {_stem(e[0]): e for e in entries}
            missing = [n for n in wanted if n not in by_name]
            if missing:
                raise DatasetError(f"split file {spath} names samples that are not in the "
                                   f"dataset: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            entries = [by_name[n] for n in wanted]
        self.split = split
        self._entries = entries

    def _load(self, entry: Tuple[str, Optional[str], bool]) -> Item:
        img_rel, mask_rel, listed_none = entry
        name = _stem(img_rel)
        ipath = _resolve(self.root, img_rel)
        image = read_image(ipath, self.exif_transpose)
        hw = image.shape[:2]
        meta: Dict[str, Any] = {}
        meta_path = os.path.join(self.root, "meta", name + ".json")
        if os.path.isfile(meta_path):
            try:
                with open(meta_path, "r", encoding="utf-8") as f:
                    meta = json.load(f)
            except (OSError, ValueError) as e:
                raise DatasetError(f"cannot parse {meta_path}: {e}") from e
        candidates = [
            (os.path.join(self.root, "sources", name + ".png"), "sources"),
            (os.path.join(self.root, "masks_safirems", name + ".png"), "safirems"),
            (os.path.join(self.root, "masks_binary", name + ".png"), "binary"),
        ]
        if mask_rel is not None:  # a list entry pointing elsewhere still counts
            kind = ("binary" if "binary" in mask_rel else
                    "sources" if mask_rel.startswith("sources") else "safirems")
            candidates.append((_resolve(self.root, mask_rel), kind))
        mpath: Optional[str] = None
        labels: Optional[np.ndarray] = None
        for path, kind in candidates:
            if not os.path.isfile(path):
                continue
            raw = _fit_mask(read_mask(path, raw_palette=(kind == "sources")), hw,
                            self.resize_mismatched, path, ipath)
            if kind == "sources":
                labels = raw
            elif kind == "safirems":
                labels = decode_safirems(raw, path=path)
            else:
                labels = decode_binary(raw)
            mpath = path
            break
        if labels is None:
            if mask_rel is not None:
                raise DatasetError(f"mask file not found for {name}: "
                                   f"{_resolve(self.root, mask_rel)}")
            if not (listed_none or meta.get("authentic") or meta.get("num_sources") == 1):
                raise DatasetError(f"no mask for {name}: looked for "
                                   f"{', '.join(p for p, _ in candidates)}")
            labels = np.zeros(hw, dtype=np.uint8)
        num = int(meta["num_sources"]) if "num_sources" in meta else _num_sources(labels)
        return Item(name=name, image=image, labels=labels, num_sources=num, meta=meta,
                    image_path=ipath, mask_path=mpath)


class SafireMSDataset(_Reader):
    """SafireMS(-Expert / -Auto) style list: ``img,mask`` lines, grey masks ``50*i`` = source
    ``i``, ``None`` = authentic. The number of sources is ``max label + 1`` (as in SAFIRE's
    metric).

    Args:
        root: folder the list's paths are relative to.
        list_file: the list file (absolute, relative to the cwd, or relative to ``root``).
        resize_mismatched: resize masks to the image size (nearest) instead of raising.
        strict: raise on mask values that are not close to a multiple of 50.
    """

    def __init__(self, root: str, list_file: str, *, resize_mismatched: bool = False,
                 strict: bool = False, exif_transpose: bool = False):
        if not os.path.isdir(root):
            raise DatasetError(f"dataset folder not found: {root}")
        self.root = os.path.abspath(root)
        if not os.path.isfile(list_file) and os.path.isfile(os.path.join(self.root, list_file)):
            list_file = os.path.join(self.root, list_file)
        self.list_file = list_file
        self._entries = read_pair_list(list_file)
        self.resize_mismatched = resize_mismatched
        self.strict = strict
        self.exif_transpose = exif_transpose

    def _load(self, entry: Tuple[str, Optional[str], List[str]]) -> Item:
        img_rel, mask_rel, extra = entry
        ipath = _resolve(self.root, img_rel)
        image = read_image(ipath, self.exif_transpose)
        hw = image.shape[:2]
        mpath = None
        if mask_rel is None:
            labels = np.zeros(hw, dtype=np.uint8)
        else:
            mpath = _resolve(self.root, mask_rel)
            raw = _fit_mask(read_mask(mpath), hw, self.resize_mismatched, mpath, ipath)
            labels = decode_safirems(raw, strict=self.strict, path=mpath)
        return Item(name=_stem(img_rel), image=image, labels=labels,
                    num_sources=_num_sources(labels),
                    meta={"list_file": self.list_file, "extra": extra}, image_path=ipath,
                    mask_path=mpath)


PairSpec = Union[str, Sequence[Sequence[Optional[str]]]]


class BinaryPairsDataset(_Reader):
    """Binary image/mask pairs (CASIA, IMD2020, IMDL-BenCo JSON, ...), labels in {0, 1}.

    Args:
        root: folder relative paths are resolved against.
        pairs: a ``.txt`` list (``img,mask`` lines, ``None`` = authentic), an IMDL-BenCo ``.json``
            list (``"Negative"`` = authentic), or an in-memory sequence of ``(img, mask)`` pairs.
        threshold: a mask pixel is forged when ``> threshold`` (default 127) ...
        nonzero: ... or when ``> 0`` if ``nonzero`` is set.
        resize_mismatched: resize masks to the image size (nearest) instead of raising.
    """

    def __init__(self, root: str, pairs: PairSpec, *, threshold: int = 127,
                 nonzero: bool = False, resize_mismatched: bool = False,
                 exif_transpose: bool = False):
        if not os.path.isdir(root):
            raise DatasetError(f"dataset folder not found: {root}")
        self.root = os.path.abspath(root)
        if isinstance(pairs, (str, os.PathLike)):
            pairs = str(pairs)
            if not os.path.isfile(pairs) and os.path.isfile(os.path.join(self.root, pairs)):
                pairs = os.path.join(self.root, pairs)
            self.list_file: Optional[str] = pairs
            self._entries = read_pair_list(pairs)
        else:
            self.list_file = None
            self._entries = []
            for k, p in enumerate(pairs):
                if not p or not isinstance(p[0], str):
                    raise DatasetError(f"pair {k} is not (image, mask): {p!r}")
                m = p[1] if len(p) > 1 else None
                self._entries.append((p[0], None if _is_none_mask(m) else str(m),
                                      [str(x) for x in p[2:]]))
        self.threshold = threshold
        self.nonzero = nonzero
        self.resize_mismatched = resize_mismatched
        self.exif_transpose = exif_transpose

    def _load(self, entry: Tuple[str, Optional[str], List[str]]) -> Item:
        img_rel, mask_rel, extra = entry
        ipath = _resolve(self.root, img_rel)
        image = read_image(ipath, self.exif_transpose)
        hw = image.shape[:2]
        mpath = None
        if mask_rel is None:
            labels = np.zeros(hw, dtype=np.uint8)
        else:
            mpath = _resolve(self.root, mask_rel)
            raw = _fit_mask(read_mask(mpath), hw, self.resize_mismatched, mpath, ipath)
            labels = decode_binary(raw, self.threshold, self.nonzero)
        return Item(name=_stem(img_rel), image=image, labels=labels,
                    num_sources=2 if labels.any() else 1,
                    meta={"list_file": self.list_file, "extra": extra}, image_path=ipath,
                    mask_path=mpath)


_SAFIREMS_LEVELS = {0, 50, 100, 150, 200, 250}


def open_dataset(path: str, root: Optional[str] = None, **kwargs: Any) -> _Reader:
    """Open a dataset, detecting its format.

    * ``synth:SPLIT?n=..&seed=..`` -> samples generated on demand
      (:class:`training.synth_reader.SynthReader`);
    * a folder with ``manifest.json`` (or ``images/`` plus ``sources/`` / ``masks_*``)
      -> :class:`SafireDataset`;
    * a ``.json`` list -> :class:`BinaryPairsDataset` (IMDL-BenCo);
    * a ``.txt`` list -> :class:`SafireMSDataset` if the (first 16) masks only hold SafireMS
      levels ``0, 50, ..., 250``, else :class:`BinaryPairsDataset` (e.g. 0/255 masks).

    List paths are relative to ``root`` (default: the list file's folder). ``kwargs`` go to
    the reader.
    """
    if path.startswith("synth:"):
        from .synth_reader import SynthReader

        return SynthReader.from_spec(path)
    if os.path.isdir(path):
        has_layout = os.path.isdir(os.path.join(path, "images")) and any(
            os.path.isdir(os.path.join(path, d))
            for d in ("sources", "masks_safirems", "masks_binary"))
        if os.path.isfile(os.path.join(path, "manifest.json")) or has_layout:
            return SafireDataset(path, **kwargs)
        raise DatasetError(f"{path} is not a safire dataset folder (no manifest.json); "
                           "pass a .txt or .json list file instead")
    if not os.path.isfile(path):
        raise DatasetError(f"dataset path not found: {path}")
    root = root or os.path.dirname(os.path.abspath(path))
    low = path.lower()
    if low.endswith(".json"):
        return BinaryPairsDataset(root, path, **kwargs)
    if low.endswith(".txt") or low.endswith(".csv") or low.endswith(".lst"):
        entries = read_pair_list(path)
        seen: set = set()
        checked = 0
        for _img, mask, _extra in entries:
            if mask is None:
                continue
            values = np.unique(read_mask(_resolve(root, mask)))
            seen.update(int(v) for v in values)
            checked += 1
            if checked >= 16 or not seen <= _SAFIREMS_LEVELS:
                break
        if seen <= _SAFIREMS_LEVELS:
            return SafireMSDataset(root, path, **kwargs)
        return BinaryPairsDataset(root, path, **kwargs)
    raise DatasetError(f"cannot tell the format of {path} (expected a folder, .txt or .json)")
