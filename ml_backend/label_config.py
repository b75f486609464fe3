"""Parse and validate a Label Studio labeling config for the SAFIRE backend.

``parse_label_config(xml)`` returns a :class:`LabelConfigSpec` describing the tags the backend
reads and writes (the Image, the BrushLabels it answers with, the smart KeyPointLabels /
RectangleLabels it receives clicks and boxes from, and the Choices tags), the working mode
("multi" source partition or "binary" forged/authentic) and the backend tuning attributes.
Every problem found is collected and reported at once in a :class:`LabelConfigError`.

Accepted ``safire_*`` attributes (on the ``BrushLabels`` tag; see ``label_config/README.md``):

=====================  ================================  ==========================================
attribute              values                            meaning
=====================  ================================  ==========================================
``safire_mode``        ``auto`` (default), ``multi``,    force the mode instead of inferring it
                       ``binary``                        from the labels
``safire_sources``     ``auto`` (default) or 1..16       number of sources to partition into
                                                         (``auto``: the model decides)
``safire_grid``        int 2..64, default 16             prompt/partition grid of the model
``safire_threshold``   float in (0, 1), default 0.5      probability threshold for masks
``safire_min_area``    float in [0, 0.5], default 0.001  drop mask components smaller than this
                                                         fraction of the image
``safire_authentic_    float in (0, 1), default: the     image score below which an image is one
threshold``            checkpoint's calibration          source (authentic); lower: fewer forged
                                                         images answered empty, more authentic
                                                         ones split (README calibration curve)
=====================  ================================  ==========================================

Provenance (optional): a ``<TextArea name="safire_provenance" toName="<image>"/>`` makes every
pre-annotation carry a text result with the prediction's provenance and the link to its heat map
(``docs/provenance.md``); the spec's ``provenance_name`` is then that tag's name.

Mode inference: ``binary`` when the BrushLabels tag has a single label or all its labels are
forged-like (Forged, Tampered, Manipulated, ...) or authentic-like (Authentic, Pristine, Real,
...); otherwise ``multi`` (one label per source, in config order).

Label words (forged-like / authentic-like names and the mode they imply) are in
:mod:`ml_backend.label_words`, the ``safire_*`` attributes' parser in :mod:`ml_backend.label_tuning`;
this module holds the spec and the parser of the whole config.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .label_tuning import TUNING_ATTRIBUTES, _parse_tuning  # noqa: F401 - TUNING_ATTRIBUTES re-exported
from .label_words import infer_mode, is_authentic_label, is_forged_label  # noqa: F401 - also re-exported

__all__ = [
    "ChoicesSpec",
    "LabelConfigError",
    "LabelConfigSpec",
    "TUNING_ATTRIBUTES",
    "infer_mode",
    "is_authentic_label",
    "is_forged_label",
    "parse_label_config",
]

_IMAGE_TAGS = {"image"}
_BRUSH_TAGS = {"brushlabels"}
_KEYPOINT_TAGS = {"keypointlabels"}
_RECT_TAGS = {"rectanglelabels"}
_CHOICES_TAGS = {"choices"}
_TEXTAREA_TAGS = {"textarea"}
PROVENANCE_TEXTAREA = "safire_provenance"
_LABEL_CHILD = {"label"}
_CHOICE_CHILD = {"choice"}
_TRUE = {"true", "1", "yes"}


class LabelConfigError(ValueError):
    """The label config cannot be used; ``problems`` lists every issue found."""

    def __init__(self, problems: Sequence[str]):
        self.problems: List[str] = list(problems)
        msg = "invalid label config for the SAFIRE backend:\n" + "\n".join(
            f"  - {p}" for p in self.problems
        )
        super().__init__(msg)


@dataclass(frozen=True)
class ChoicesSpec:
    name: str
    to_name: str
    choices: Tuple[str, ...]
    per_region: bool = False

    @property
    def authentic_choices(self) -> Tuple[str, ...]:
        return tuple(c for c in self.choices if is_authentic_label(c))


@dataclass(frozen=True)
class LabelConfigSpec:
    image_name: str
    image_value: str  # task data key, e.g. "image" for value="$image"
    brush_name: str
    brush_labels: Tuple[str, ...]
    keypoint_name: Optional[str] = None
    keypoint_labels: Tuple[str, ...] = ()
    rectangle_name: Optional[str] = None
    rectangle_labels: Tuple[str, ...] = ()
    choices: Tuple[ChoicesSpec, ...] = ()
    mode: str = "multi"  # "multi" | "binary"
    num_sources: Union[str, int] = "auto"
    grid_size: int = 16
    threshold: float = 0.5
    min_area: float = 0.001
    authentic_threshold: Optional[float] = None  # None: the checkpoint's single_source_threshold
    label_colors: Dict[str, str] = field(default_factory=dict, compare=False)
    provenance_name: Optional[str] = None  # <TextArea name="safire_provenance"> for the image, if any

    # -- label helpers ---------------------------------------------------------------
    def label_index(self, label: str) -> int:
        """Position of ``label`` among the brush labels (the raw source index in multi mode)."""
        return self.brush_labels.index(label)

    @property
    def forged_label(self) -> Optional[str]:
        """Binary mode: the label that marks forged pixels."""
        if self.mode != "binary":
            return None
        for lab in self.brush_labels:
            if is_forged_label(lab):
                return lab
        non_auth = [lab for lab in self.brush_labels if not is_authentic_label(lab)]
        return non_auth[0] if non_auth else self.brush_labels[0]

    @property
    def authentic_label(self) -> Optional[str]:
        """Binary mode: the label that marks authentic pixels explicitly (if any)."""
        if self.mode != "binary":
            return None
        forged = self.forged_label
        for lab in self.brush_labels:
            if lab != forged and is_authentic_label(lab):
                return lab
        return None

    @property
    def host_label(self) -> Optional[str]:
        """Multi mode: the label unpainted pixels are merged into (one saying "host", else the first)."""
        if self.mode != "multi":
            return None
        for lab in self.brush_labels:
            if "host" in lab.lower():
                return lab
        return self.brush_labels[0]

    @property
    def smart_labels(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(self.keypoint_labels + self.rectangle_labels))

    @property
    def image_choices(self) -> Tuple[ChoicesSpec, ...]:
        return tuple(c for c in self.choices if not c.per_region)

    @property
    def region_choices(self) -> Tuple[ChoicesSpec, ...]:
        return tuple(c for c in self.choices if c.per_region)


# ------------------------------------------------------------------------------------
# parsing
# ------------------------------------------------------------------------------------


def _local(tag: object) -> str:
    if not isinstance(tag, str):  # comments / processing instructions
        return ""
    return tag.rsplit("}", 1)[-1].lower()


def _truthy(v: Optional[str]) -> bool:
    return v is not None and v.strip().lower() in _TRUE


def _child_values(el: ET.Element, child_tags: set) -> List[str]:
    out = []
    for child in el.iter():
        if child is el or _local(child.tag) not in child_tags:
            continue
        v = child.get("value")
        if v is None:
            v = child.get("alias")
        if v is not None:
            out.append(v)
    return out


def _to_names(el: ET.Element) -> List[str]:
    return [t.strip() for t in (el.get("toName") or "").split(",") if t.strip()]


def _fmt(labels: Sequence[str]) -> str:
    return ", ".join(repr(x) for x in labels)


def _pick(tags: List[ET.Element], image_name: Optional[str], prefer_smart: bool) -> Optional[ET.Element]:
    if not tags:
        return None
    pointing = [t for t in tags if image_name in _to_names(t)] if image_name else list(tags)
    pool = pointing or tags
    if prefer_smart:
        smart = [t for t in pool if _truthy(t.get("smart")) or _truthy(t.get("smartOnly"))]
        if smart:
            return smart[0]
    return pool[0]


def parse_label_config(xml: str) -> LabelConfigSpec:
    """Parse a labeling config; raise :class:`LabelConfigError` listing every problem."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError(["the label config is empty"])
    text = xml.lstrip("\ufeff")
    problems: List[str] = []
    upper = text.upper()
    if "<!DOCTYPE" in upper or "<!ENTITY" in upper:
        raise LabelConfigError(["DOCTYPE/ENTITY declarations are not allowed in a label config"])
    if re.match(r"\s*<\?xml", text, re.IGNORECASE) or "<?xml" in text.lower():
        problems.append(
            "the config starts with an XML declaration (<?xml ...?>); Label Studio 1.23.2 answers "
            "HTTP 500 to that: start the config directly with <View>"
        )
        text = re.sub(r"<\?xml[^>]*\?>", "", text, flags=re.IGNORECASE)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise LabelConfigError(problems + [f"malformed XML: {exc}"]) from None

    if _local(root.tag) != "view":
        problems.append(f"the root tag must be <View>, got <{root.tag}>")

    by_kind: Dict[str, List[ET.Element]] = {"image": [], "brush": [], "kp": [], "rect": [], "choices": [],
                                            "textarea": []}
    names: Dict[str, int] = {}
    for el in root.iter():
        t = _local(el.tag)
        kind = (
            "image" if t in _IMAGE_TAGS else
            "brush" if t in _BRUSH_TAGS else
            "kp" if t in _KEYPOINT_TAGS else
            "rect" if t in _RECT_TAGS else
            "choices" if t in _CHOICES_TAGS else
            "textarea" if t in _TEXTAREA_TAGS else None
        )
        if kind:
            by_kind[kind].append(el)
            n = el.get("name")
            if n:
                names[n] = names.get(n, 0) + 1
    dup = sorted(n for n, c in names.items() if c > 1)
    if dup:
        problems.append("tag names must be unique; duplicated: " + _fmt(dup))

    # ---- Image
    images = by_kind["image"]
    image_names = [im.get("name") for im in images if im.get("name")]
    if not images:
        problems.append('no <Image> tag: add <Image name="image" value="$image"/>')
    for im in images:
        if not im.get("name"):
            problems.append("an <Image> tag has no name attribute")
        v = im.get("value") or ""
        if not v.startswith("$") or len(v) < 2:
            problems.append(
                f'<Image name="{im.get("name")}"> needs value="$<task data key>", got value="{v}"'
            )

    # ---- BrushLabels
    brushes = by_kind["brush"]
    brush = None
    if not brushes:
        problems.append(
            "no <BrushLabels> tag: the backend answers with brush masks, add "
            '<BrushLabels name="..." toName="<image name>"> with <Label value="..."/> children'
        )
    else:
        pointing = [b for b in brushes if set(_to_names(b)) & set(image_names)]
        brush = pointing[0] if pointing else brushes[0]
        if not brush.get("name"):
            problems.append("the <BrushLabels> tag has no name attribute")
        if not pointing and images:
            problems.append(
                f'<BrushLabels name="{brush.get("name")}"> has toName="{brush.get("toName") or ""}", '
                f"which is not an <Image> tag (images: {_fmt(image_names)})"
            )

    image = None
    if brush is not None:
        for im in images:
            if im.get("name") in _to_names(brush):
                image = im
                break
    if image is None and images:
        image = images[0]
    image_name = image.get("name") if image is not None else None
    image_value = (image.get("value") or "").lstrip("$") if image is not None else ""

    brush_labels: List[str] = []
    tuning: dict = {}
    colors: Dict[str, str] = {}
    if brush is not None:
        brush_labels = _child_values(brush, _LABEL_CHILD)
        for child in brush.iter():
            if _local(child.tag) in _LABEL_CHILD and child.get("value") and child.get("background"):
                colors[child.get("value")] = child.get("background")
        if not brush_labels:
            problems.append(f'<BrushLabels name="{brush.get("name")}"> has no <Label value="..."/> children')
        dups = sorted({x for x in brush_labels if brush_labels.count(x) > 1})
        if dups:
            problems.append(f'<BrushLabels name="{brush.get("name")}"> repeats labels: {_fmt(dups)}')
        tuning = _parse_tuning(brush, problems)

    # ---- smart tags
    def smart_tag(kind: str, tag_name: str):
        tags = by_kind[kind]
        el = _pick(tags, image_name, prefer_smart=True)
        if el is None:
            return None, ()
        labels = _child_values(el, _LABEL_CHILD)
        nm = el.get("name")
        if not nm:
            problems.append(f"a <{tag_name}> tag has no name attribute")
        if image_name and image_name not in _to_names(el):
            problems.append(
                f'<{tag_name} name="{nm}"> has toName="{el.get("toName") or ""}" but the brush '
                f'image is "{image_name}"'
            )
        if not labels:
            problems.append(f'<{tag_name} name="{nm}"> has no <Label value="..."/> children')
        elif brush_labels:
            extra = [x for x in labels if x not in brush_labels]
            if extra:
                problems.append(
                    f'<{tag_name} name="{nm}"> labels {_fmt(extra)} are not BrushLabels labels '
                    f"({_fmt(brush_labels)}): the label of a click/box becomes the label of the "
                    "returned brush mask, so the values must be identical"
                )
        if not (_truthy(el.get("smart")) or _truthy(el.get("smartOnly"))):
            # not an error: a manual tool is fine, it just never reaches the backend
            pass
        return nm, tuple(labels)

    kp_name, kp_labels = smart_tag("kp", "KeyPointLabels")
    rect_name, rect_labels = smart_tag("rect", "RectangleLabels")

    # ---- Choices
    choices: List[ChoicesSpec] = []
    for ch in by_kind["choices"]:
        nm = ch.get("name")
        if not nm:
            problems.append("a <Choices> tag has no name attribute")
            continue
        values = _child_values(ch, _CHOICE_CHILD)
        choices.append(
            ChoicesSpec(
                name=nm,
                to_name=",".join(_to_names(ch)),
                choices=tuple(values),
                per_region=_truthy(ch.get("perRegion")),
            )
        )

    # ---- optional provenance text area (docs/provenance.md)
    provenance_name = None
    for ta in by_kind["textarea"]:
        if ta.get("name") == PROVENANCE_TEXTAREA:
            if image_name and image_name not in _to_names(ta):
                problems.append(f'<TextArea name="{PROVENANCE_TEXTAREA}"> has toName="{ta.get("toName") or ""}" '
                                f'but the brush image is "{image_name}"')
            provenance_name = PROVENANCE_TEXTAREA

    # ---- mode
    mode = tuning.pop("mode", "auto")
    if mode == "auto":
        mode = infer_mode(brush_labels) if brush_labels else "multi"
    if mode == "binary" and brush_labels:
        forged = [x for x in brush_labels if is_forged_label(x)]
        if all(is_authentic_label(x) and not is_forged_label(x) for x in brush_labels):
            problems.append(
                f"binary mode needs a label for forged pixels, but {_fmt(brush_labels)} "
                "only look authentic"
            )
        elif len(brush_labels) > 2:
            problems.append(
                f"binary mode needs one forged label (optionally plus one authentic label), got "
                f"{_fmt(brush_labels)}"
            )
        elif len(brush_labels) == 2 and not forged and not any(is_authentic_label(x) for x in brush_labels):
            problems.append(
                f"binary mode with two labels needs a forged-like and an authentic-like label, got "
                f"{_fmt(brush_labels)}"
            )
    if mode == "multi" and isinstance(tuning.get("num_sources"), int) and brush_labels:
        if tuning["num_sources"] > len(brush_labels):
            problems.append(
                f"safire_sources={tuning['num_sources']} exceeds the {len(brush_labels)} BrushLabels "
                "labels (one label per source)"
            )

    if problems:
        raise LabelConfigError(problems)

    assert brush is not None and image is not None
    return LabelConfigSpec(
        image_name=str(image_name),
        image_value=image_value,
        brush_name=str(brush.get("name")),
        brush_labels=tuple(brush_labels),
        keypoint_name=kp_name,
        keypoint_labels=kp_labels,
        rectangle_name=rect_name,
        rectangle_labels=rect_labels,
        choices=tuple(choices),
        mode=mode,
        label_colors=colors,
        provenance_name=provenance_name,
        **tuning,
    )
