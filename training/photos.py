"""The offline photo pool used by the synthetic forgery generator (``training.synth``).

Two sources, neither of which touches the network at generation time:

* the **bundled** photos: 16 photographs that ship *inside* installed wheels (scikit-image sample
  images read straight from the ``skimage/data`` folder, never through the ``skimage.data``
  fetchers, and scikit-learn's two sample images). Always available.
* the **installed** pool: several hundred photographs extracted from Debian packages by
  ``scripts/install_photos.py`` (``make photos``) into ``$SAFIRE_PHOTO_DIR`` (default
  ``~/.cache/safire-studio/photos``), described by its ``manifest.json``. Used automatically when
  that manifest exists; otherwise the pool falls back to the bundled photos with a one-line warning.
  ``SAFIRE_PHOTO_POOL=bundled`` forces the bundled photos only (the test suite does this),
  ``SAFIRE_PHOTO_POOL=installed`` makes a missing installed pool an error.

Licences, sources and the split of every photo are listed in ``docs/photos.md``.

Splits. ``train`` photos are never held out; ``heldout`` = ``val`` + ``test`` is never used by
``PhotoPool.load("train")``, as a host *or* a donor. The bundled :data:`VAL_PHOTOS` are ``val``;
an installed photo is held out when ``sha1(group) mod 5 == 0`` (its group is its name unless it
belongs to a set of views of one scene, e.g. a stereo pair) and then is ``val`` or ``test`` by the
next digit of the same hash: see :func:`split_of`.

Images are ``H x W x 3`` uint8 RGB. Greyscale photographs are replicated to three channels and
flagged ``grey=True``; the generator only splices colour donors into colour hosts. Photo cut-outs
(``kind == "cutout"``: RGBA photos whose alpha is an object mask) are never hosts: they are in
:attr:`PhotoPool.cutouts`, with the mask in :attr:`Photo.alpha`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = ["Photo", "PhotoPool", "PHOTO_SPECS", "VAL_PHOTOS", "PhotoSpec", "SPLITS", "photo_dir",
           "read_manifest", "split_of"]

log = logging.getLogger(__name__)

#: Splits accepted by :meth:`PhotoPool.load`.
SPLITS: Tuple[str, ...] = ("train", "val", "test", "heldout", "all")
PHOTO_DIR_ENV = "SAFIRE_PHOTO_DIR"
POOL_ENV = "SAFIRE_PHOTO_POOL"  # auto (default) | bundled | installed
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class PhotoSpec:
    """Where a bundled photograph lives and how the pool uses it."""

    name: str
    package: str  # "scikit-image" | "scikit-learn" | a Debian package (installed pool)
    filename: str  # file name inside the package's data folder / the photo folder
    licence: str
    grey: bool = False
    weight: float = 1.0  # relative probability of being picked (host or donor)
    # Usable region as fractions (top, left, bottom, right) of the photo, e.g. to skip the
    # black surround of the retina fundus photo.
    box: Tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    kind: str = "host"  # "host" (a full photograph) | "cutout" (RGBA photo cut-out)
    split: str = "train"  # "train" | "val" | "test"
    source: str = "bundled"  # "bundled" (inside a wheel) | "installed" (scripts/install_photos.py)
    path: str = ""  # installed pool: the file's path inside its package
    version: str = ""  # installed pool: the package version it came from
    scale: float = 1.0  # installed pool: stored size / original size
    group: str = ""  # installed pool: photos of one scene share a group (and so a split)


PHOTO_SPECS: Tuple[PhotoSpec, ...] = (
    # colour, scikit-image
    PhotoSpec("astronaut", "scikit-image", "astronaut.png", "public domain (NASA)"),
    PhotoSpec("chelsea", "scikit-image", "chelsea.png", "CC0 (Stefan van der Walt)"),
    PhotoSpec("coffee", "scikit-image", "coffee.png", "CC0 (Rachel Michetti)"),
    PhotoSpec("motorcycle_left", "scikit-image", "motorcycle_left.png",
              "Middlebury 2014 stereo benchmark (academic use; see docs/photos.md)", weight=0.7),
    PhotoSpec("motorcycle_right", "scikit-image", "motorcycle_right.png",
              "Middlebury 2014 stereo benchmark (academic use; see docs/photos.md)", weight=0.7),
    PhotoSpec("rocket", "scikit-image", "rocket.jpg", "public domain (SpaceX)"),
    PhotoSpec("hubble_deep_field", "scikit-image", "hubble_deep_field.jpg",
              "public domain (NASA)", weight=0.4),
    PhotoSpec("retina", "scikit-image", "retina.jpg", "CC0 (Mikael Haggstrom)", weight=0.4,
              box=(0.17, 0.17, 0.83, 0.83)),
    PhotoSpec("ihc", "scikit-image", "ihc.png", "no known copyright restrictions (CMMI)",
              weight=0.5),
    # colour, scikit-learn
    PhotoSpec("china", "scikit-learn", "china.jpg", "CC-BY 2.0 (danielbuechele on Flickr)"),
    PhotoSpec("flower", "scikit-learn", "flower.jpg", "CC-BY 2.0 (vultilion on Flickr)"),
    # greyscale, scikit-image
    PhotoSpec("camera", "scikit-image", "camera.png", "CC0 (Lav Varshney)", grey=True, weight=0.5),
    PhotoSpec("brick", "scikit-image", "brick.png", "CC0 (CC0Textures)", grey=True, weight=0.3),
    PhotoSpec("grass", "scikit-image", "grass.png", "CC0 (linolafett)", grey=True, weight=0.3),
    PhotoSpec("gravel", "scikit-image", "gravel.png", "CC0 (CC0Textures)", grey=True, weight=0.3),
    PhotoSpec("coins", "scikit-image", "coins.png",
              "no known copyright restrictions (Brooklyn Museum)", grey=True, weight=0.3),
)

#: Bundled photos held out for validation: never used (as host or donor) by ``split="train"``.
VAL_PHOTOS: Tuple[str, ...] = ("coffee", "rocket", "flower")
PHOTO_SPECS = tuple(dataclasses.replace(s, split="val") if s.name in VAL_PHOTOS else s
                    for s in PHOTO_SPECS)
_BUNDLED: Dict[str, PhotoSpec] = {s.name: s for s in PHOTO_SPECS}


def split_of(key: str) -> str:
    """The fixed split of an installed photo from its group key (its name unless grouped).

    ``h = int(sha1(key).hexdigest(), 16)``: held out when ``h % 5 == 0`` (about 20 %), then
    ``"val"`` when ``(h // 5) % 2 == 0`` else ``"test"``; everything else is ``"train"``.
    """
    h = int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16)
    if h % 5:
        return "train"
    return "val" if (h // 5) % 2 == 0 else "test"


def _in_split(photo_split: str, split: str) -> bool:
    if split == "all":
        return True
    if split == "heldout":
        return photo_split in ("val", "test")
    return photo_split == split


#: Sub-folder of a packed pool holding copies of the bundled (scikit-image/-learn) photos, used when
#: the machine's scikit-image lacks a file.
BUNDLED_COPY_DIR = "bundled"


def photo_dir() -> str:
    """The installed pool's folder: ``$SAFIRE_PHOTO_DIR`` or ``~/.cache/safire-studio/photos``."""
    d = os.environ.get(PHOTO_DIR_ENV) or os.path.join("~", ".cache", "safire-studio", "photos")
    return os.path.abspath(os.path.expanduser(d))


def read_manifest(folder: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The installed pool's manifest, or ``None`` when it is not installed there."""
    path = os.path.join(folder or photo_dir(), MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        man = json.load(f)
    if man.get("format") != MANIFEST_FORMAT or not isinstance(man.get("photos"), list):
        raise ValueError(f"{path}: not a photo-pool manifest of format {MANIFEST_FORMAT}")
    return man


def _spec_from_entry(e: Dict[str, Any]) -> PhotoSpec:
    group = e.get("group") or e["name"]
    return PhotoSpec(
        name=e["name"], package=e["package"], filename=e["file"], licence=e["licence"],
        grey=bool(e.get("grey", False)), weight=float(e.get("weight", 1.0)),
        box=tuple(e.get("box", (0.0, 0.0, 1.0, 1.0))), kind=e.get("kind", "host"),
        split=split_of(group), source="installed", path=e.get("path", ""),
        version=e.get("version", ""), scale=float(e.get("scale", 1.0)), group=group)


_warned: Dict[str, bool] = {}


def _installed_specs() -> Tuple[Optional[str], Tuple[PhotoSpec, ...]]:
    """(folder, specs) of the installed pool; ``(None, ())`` when it is not used."""
    mode = os.environ.get(POOL_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "bundled", "installed"):
        raise ValueError(f"{POOL_ENV} must be auto, bundled or installed, not {mode!r}")
    if mode == "bundled":
        return None, ()
    folder = photo_dir()
    man = read_manifest(folder)
    if man is None:
        if mode == "installed":
            raise FileNotFoundError(f"no photo pool installed in {folder} (run `make photos`)")
        if not _warned.get(folder):
            _warned[folder] = True
            log.warning("no installed photo pool in %s (run `make photos`): using the %d bundled "
                        "photos only", folder, len(PHOTO_SPECS))
        return None, ()
    bundled = {s.name for s in PHOTO_SPECS}
    specs = tuple(_spec_from_entry(e) for e in man["photos"] if e["name"] not in bundled)
    return folder, specs


@dataclass(frozen=True)
class Photo:
    """One decoded photograph of the pool.

    Attributes:
        name: short name, e.g. ``"astronaut"``.
        image: ``H x W x 3`` uint8 RGB (read-only).
        spec: where it comes from and its licence.
    """

    name: str
    image: np.ndarray
    spec: PhotoSpec
    alpha: Optional[np.ndarray] = None  # cut-outs: ``H x W`` uint8 object mask (255 = object)

    @property
    def grey(self) -> bool:
        return self.spec.grey

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def split(self) -> str:
        return self.spec.split

    @property
    def weight(self) -> float:
        return self.spec.weight

    @property
    def usable_box(self) -> Tuple[int, int, int, int]:
        """Usable region in pixels, ``(top, left, bottom, right)``."""
        h, w = self.image.shape[:2]
        t, l, b, r = self.spec.box
        return int(round(t * h)), int(round(l * w)), int(round(b * h)), int(round(r * w))

    @property
    def pil(self) -> Image.Image:
        """The usable region as a PIL image (used for fast crop+resize).

        Cached for photos up to 1 megapixel; larger ones are converted on each call (a few ms),
        because PIL holds RGB at 4 bytes a pixel and a cached copy would more than double the
        memory of a large pool.
        """
        im = self.__dict__.get("_pil")
        if im is None:
            t, l, b, r = self.usable_box
            im = Image.fromarray(np.ascontiguousarray(self.image[t:b, l:r]))
            if (b - t) * (r - l) <= _PIL_CACHE_PIXELS:
                self.__dict__["_pil"] = im
        return im


_PIL_CACHE_PIXELS = 1 << 20


def _package_dir(package: str) -> str:
    if package == "scikit-image":
        import skimage

        return os.path.join(os.path.dirname(skimage.__file__), "data")
    if package == "scikit-learn":
        import sklearn

        return os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images")
    raise ValueError(f"unknown package {package!r}")


def _decode(path: str, spec: PhotoSpec) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    with Image.open(path) as im:
        alpha = None
        if spec.kind == "cutout":
            rgba = np.asarray(im.convert("RGBA"))
            alpha = np.ascontiguousarray(rgba[:, :, 3])
            alpha.setflags(write=False)
            arr = rgba[:, :, :3]
            if spec.grey:
                arr = np.asarray(Image.fromarray(np.ascontiguousarray(arr)).convert("L"))
                arr = np.repeat(arr[:, :, None], 3, axis=2)
        elif spec.grey:
            arr = np.asarray(im.convert("L"))
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        else:
            arr = np.asarray(im.convert("RGB"))
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    arr.setflags(write=False)
    return arr, alpha


@functools.lru_cache(maxsize=None)
def _load_installed(folder: str, spec: PhotoSpec) -> Photo:
    path = os.path.join(folder, spec.filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"installed photo {spec.name!r} missing at {path} "
                                "(re-run `make photos`)")
    arr, alpha = _decode(path, spec)
    return Photo(name=spec.name, image=arr, spec=spec, alpha=alpha)


@functools.lru_cache(maxsize=None)
def _load_photo(name: str) -> Photo:
    spec = _BUNDLED[name]
    path = os.path.join(_package_dir(spec.package), spec.filename)
    if not os.path.isfile(path):  # a packed pool (scripts/pack_photo_pool.py) carries its own copy
        path = os.path.join(photo_dir(), BUNDLED_COPY_DIR, spec.filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"bundled photo {name!r} not found at {path} (is {spec.package} installed?)")
    arr, _ = _decode(path, spec)
    return Photo(name=name, image=arr, spec=spec)


class PhotoPool:
    """The host/donor photographs of one split, plus that split's photo cut-outs.

    Use :meth:`load`. Hosts and donors are :attr:`photos` (what :meth:`choose` picks from);
    cut-outs (RGBA photos whose alpha is an object mask) are only in :attr:`cutouts`, decoded on
    first access. Photos are decoded once per process.
    """

    def __init__(self, photos: Sequence[Photo], split: str = "custom",
                 cutouts: Optional[Sequence[Photo]] = None):
        if not photos:
            raise ValueError("a PhotoPool needs at least one photo")
        self.photos: List[Photo] = list(photos)
        self.split = split
        self._by_name: Dict[str, Photo] = {p.name: p for p in self.photos}
        self._cutouts: Optional[List[Photo]] = None if cutouts is None else list(cutouts)
        self._cutout_specs: Tuple[PhotoSpec, ...] = ()
        self._folder: Optional[str] = None

    @staticmethod
    def specs(split: str = "all", *, kind: Optional[str] = "host") -> List[PhotoSpec]:
        """The specs of ``split`` without decoding anything (bundled first, then installed);
        ``kind=None`` gives hosts and cut-outs."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        _, installed = _installed_specs()
        return [s for s in (*PHOTO_SPECS, *installed)
                if _in_split(s.split, split) and (kind is None or s.kind == kind)]

    @classmethod
    def load(cls, split: str = "train", names: Optional[Sequence[str]] = None) -> "PhotoPool":
        """Load the host photos of ``split`` ("train" | "val" | "test" | "heldout" | "all"),
        optionally restricted to ``names``.

        ``heldout`` is ``val`` + ``test``; ``all`` is everything. The installed pool is used when
        its manifest exists (see the module docstring), else only the bundled photos.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        folder, installed = _installed_specs()
        chosen = [s for s in (*PHOTO_SPECS, *installed) if _in_split(s.split, split)]
        hosts = [s for s in chosen if s.kind == "host"]
        if names is not None:
            unknown = set(names) - {s.name for s in hosts}
            if unknown:
                raise ValueError(f"photos {sorted(unknown)} are not in split {split!r}")
            hosts = [s for s in hosts if s.name in set(names)]
        if not hosts:
            raise ValueError(f"no photos in split {split!r}" + (
                "" if folder else " (only the bundled photos are available: run `make photos`)"))
        photos = [_load_photo(s.name) if s.source == "bundled" else _load_installed(folder, s)
                  for s in hosts]
        pool = cls(photos, split=split)
        pool._folder = folder
        pool._cutout_specs = tuple(s for s in chosen if s.kind == "cutout")
        return pool

    @property
    def cutouts(self) -> List[Photo]:
        """The split's photo cut-outs (``Photo.alpha`` is the object mask); decoded on first
        access; empty without the installed pool."""
        if self._cutouts is None:
            self._cutouts = [_load_installed(self._folder, s) for s in self._cutout_specs]
        return self._cutouts

    @property
    def names(self) -> List[str]:
        return [p.name for p in self.photos]

    def __len__(self) -> int:
        return len(self.photos)

    def __iter__(self):
        return iter(self.photos)

    def __getitem__(self, name: str) -> Photo:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def choose(self, rng: np.random.Generator, *, colour_only: bool = False,
               exclude: Sequence[str] = ()) -> Photo:
        """Pick a host/donor photo with probability proportional to its weight (never a
        cut-out).

        Falls back to ignoring ``exclude`` (then ``colour_only``) when nothing else is left.
        """
        return _weighted(self.photos, rng, colour_only, exclude)

    def choose_cutout(self, rng: np.random.Generator, *, colour_only: bool = False,
                      exclude: Sequence[str] = ()) -> Photo:
        """Pick a photo cut-out (its ``alpha`` is the object mask), weighted like
        :meth:`choose`. Raises ``LookupError`` when the split has none."""
        if not self.cutouts:
            raise LookupError(f"no photo cut-outs in split {self.split!r}")
        return _weighted(self.cutouts, rng, colour_only, exclude)


def _weighted(photos: Sequence[Photo], rng: np.random.Generator, colour_only: bool,
              exclude: Sequence[str]) -> Photo:
    for cands in (
        [p for p in photos if p.name not in exclude and not (colour_only and p.grey)],
        [p for p in photos if not (colour_only and p.grey)],
        list(photos),
    ):
        if cands:
            break
    w = np.array([p.weight for p in cands], dtype=np.float64)
    return cands[int(rng.choice(len(cands), p=w / w.sum()))]
