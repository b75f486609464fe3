"""Tests for ml_backend.label_config and the shipped label configs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ml_backend.label_config import ChoicesSpec, LabelConfigError, parse_label_config
from ml_backend.label_words import infer_mode, is_authentic_label, is_forged_label

ROOT = Path(__file__).resolve().parents[1]
MULTI = ROOT / "label_config" / "multi_source.xml"
BINARY = ROOT / "label_config" / "binary.xml"
REQUESTS = Path(__file__).resolve().parent / "fixtures" / "labelstudio-1.23.2-requests.jsonl"

SOURCES = ("Source 1 (host)", "Source 2", "Source 3", "Source 4")

# The config of the fixtures README / protocol note section 5.4
FIXTURE_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="mask" toName="image">
    <Label value="Tampered" background="#FF0000"/>
  </BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="Tampered" smart="true" background="#FFaa00"/>
  </KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true">
    <Label value="Tampered" background="#00aaFF"/>
  </RectangleLabels>
</View>"""


def config(brush_attrs: str = "", brush_labels=("A", "B"), kp_labels=None, extra: str = "",
           image: str = '<Image name="image" value="$image"/>', to_name: str = "image") -> str:
    labels = "".join(f'<Label value="{x}"/>' for x in brush_labels)
    kp = ""
    if kp_labels is not None:
        kp = ('<KeyPointLabels name="kp" toName="image" smart="true">'
              + "".join(f'<Label value="{x}"/>' for x in kp_labels) + "</KeyPointLabels>")
    return (f'<View>{image}<BrushLabels name="brush" toName="{to_name}" {brush_attrs}>{labels}'
            f"</BrushLabels>{kp}{extra}</View>")


def errors_of(xml: str) -> list:
    with pytest.raises(LabelConfigError) as ei:
        parse_label_config(xml)
    assert str(ei.value).startswith("invalid label config")
    return ei.value.problems


# ------------------------------------------------------------------------ shipped configs


def test_multi_source_config():
    text = MULTI.read_text()
    assert text.startswith("<View>")  # no XML declaration (LS 1.23.2 answers 500)
    spec = parse_label_config(text)
    assert spec.mode == "multi"
    assert (spec.image_name, spec.image_value) == ("image", "image")
    assert spec.brush_name == "source" and spec.brush_labels == SOURCES
    assert spec.keypoint_name == "click" and spec.keypoint_labels == SOURCES
    assert spec.rectangle_name == "box" and spec.rectangle_labels == SOURCES
    assert spec.num_sources == "auto" and spec.grid_size == 16
    assert spec.host_label == "Source 1 (host)" and spec.forged_label is None
    assert spec.label_index("Source 3") == 2
    assert len(set(spec.label_colors.values())) == 4  # distinct colours
    manip = next(c for c in spec.choices if c.name == "manipulation")
    assert manip == ChoicesSpec("manipulation", "image",
                                ("splicing", "copy-move", "removal", "generative", "other"), True)
    assert spec.region_choices == (manip,)
    assert [c.name for c in spec.image_choices] == ["verdict"]
    assert spec.image_choices[0].authentic_choices == ("authentic",)


def test_binary_config():
    text = BINARY.read_text()
    assert text.startswith("<View>")
    spec = parse_label_config(text)
    assert spec.mode == "binary"
    assert spec.brush_name == "forgery" and spec.brush_labels == ("Forged", "Authentic")
    assert spec.forged_label == "Forged" and spec.authentic_label == "Authentic"
    assert spec.keypoint_labels == ("Forged",) and spec.rectangle_labels == ("Forged",)
    assert [c.name for c in spec.image_choices] == ["verdict"]
    assert set(spec.image_choices[0].choices) == {"authentic", "forged"}
    assert spec.host_label is None


def test_fixture_config_is_binary_like():
    spec = parse_label_config(FIXTURE_CONFIG)
    assert spec.mode == "binary"
    assert (spec.brush_name, spec.keypoint_name, spec.rectangle_name) == ("mask", "kp", "box")
    assert spec.brush_labels == ("Tampered",) and spec.forged_label == "Tampered"
    assert spec.authentic_label is None and spec.choices == ()


def test_config_captured_from_label_studio():
    first = json.loads(REQUESTS.read_text().splitlines()[0])
    xml = first["body"]["project"]["label_config"]
    assert parse_label_config(xml) == parse_label_config(FIXTURE_CONFIG)


def test_shipped_configs_validate_with_the_sdk():
    li_mod = pytest.importorskip("label_studio_sdk.label_interface")
    for path in (MULTI, BINARY):
        li = li_mod.LabelInterface(path.read_text())
        li.validate()  # schema, unique names, toName, attributes


def test_parse_is_fast():
    texts = [MULTI.read_text(), BINARY.read_text(), FIXTURE_CONFIG]
    for t in texts:
        parse_label_config(t)
    t0 = time.perf_counter()
    for _ in range(100):
        for t in texts:
            parse_label_config(t)
    per_call_ms = (time.perf_counter() - t0) / 300 * 1e3
    assert per_call_ms < 5, per_call_ms


# ------------------------------------------------------------------------ tuning attributes


def test_tuning_attributes():
    spec = parse_label_config(config('safire_sources="3" safire_grid="8" safire_threshold="0.4" '
                                     'safire_min_area="0.01"', brush_labels=SOURCES))
    assert (spec.num_sources, spec.grid_size, spec.threshold, spec.min_area) == (3, 8, 0.4, 0.01)
    assert parse_label_config(config('safire_sources="auto"', SOURCES)).num_sources == "auto"
    assert parse_label_config(config('', SOURCES)).authentic_threshold is None
    assert parse_label_config(config('safire_authentic_threshold="0.75"', SOURCES)).authentic_threshold == 0.75
    # forcing the mode
    assert parse_label_config(config('safire_mode="multi"', ("Forged", "Authentic"))).mode == "multi"
    assert parse_label_config(config('safire_mode="binary"', ("Edit",))).mode == "binary"


@pytest.mark.parametrize(
    "attrs, fragment",
    [
        ('safire_sources="many"', 'expected "auto" or an integer'),
        ('safire_sources="0"', "within 1..16"),
        ('safire_sources="17"', "within 1..16"),
        ('safire_grid="sixteen"', "expected an integer"),
        ('safire_grid="1"', "within 2..64"),
        ('safire_threshold="1.5"', "between 0 and 1"),
        ('safire_threshold="x"', "expected a number"),
        ('safire_min_area="0.9"', "within [0, 0.5]"),
        ('safire_authentic_threshold="1"', "between 0 and 1"),
        ('safire_authentic_threshold="high"', "expected a number"),
        ('safire_mode="ternary"', "auto, multi or binary"),
        ('safire_gird="16"', "unknown attribute 'safire_gird'"),
    ],
)
def test_bad_tuning_values(attrs, fragment):
    problems = errors_of(config(attrs, brush_labels=SOURCES))
    assert any(fragment in p for p in problems), problems
    assert any(attrs.split("=")[0] in p for p in problems), problems


def test_sources_cannot_exceed_labels():
    problems = errors_of(config('safire_sources="6"', brush_labels=SOURCES))
    assert any("exceeds the 4 BrushLabels labels" in p for p in problems)


# ------------------------------------------------------------------------ errors


def test_no_image_tag():
    problems = errors_of('<View><BrushLabels name="b" toName="image"><Label value="X"/></BrushLabels></View>')
    assert any("no <Image> tag" in p for p in problems)


def test_no_brush_labels():
    problems = errors_of('<View><Image name="image" value="$image"/>'
                         '<KeyPointLabels name="kp" toName="image"><Label value="X"/></KeyPointLabels></View>')
    assert any("no <BrushLabels> tag" in p for p in problems)


def test_brush_not_pointing_at_image():
    problems = errors_of(config(to_name="photo"))
    assert any('toName="photo"' in p and "not an <Image> tag" in p for p in problems)


def test_smart_labels_must_match_brush_labels():
    problems = errors_of(config(brush_labels=("Forged",), kp_labels=("Forged", "Tampered")))
    assert any("'Tampered'" in p and "identical" in p for p in problems), problems
    # a subset is fine (binary config: smart tools only for "Forged")
    assert parse_label_config(config(brush_labels=("Forged", "Authentic"), kp_labels=("Forged",)))


def test_xml_declaration_rejected():
    xml = '<?xml version="1.0" encoding="utf-8"?>\n' + FIXTURE_CONFIG
    problems = errors_of(xml)
    assert len(problems) == 1 and "XML declaration" in problems[0] and "<View>" in problems[0]


@pytest.mark.parametrize("bad", [
    '<!DOCTYPE View [<!ENTITY x "y">]><View/>',
    '<View><!ENTITY lol "lol"></View>',
])
def test_doctype_and_entities_rejected(bad):
    problems = errors_of(bad)
    assert any("DOCTYPE/ENTITY" in p for p in problems)


def test_malformed_xml():
    problems = errors_of('<View><Image name="image" value="$image"></View>')
    assert any(p.startswith("malformed XML") and "line 1" in p for p in problems)
    assert any("empty" in p for p in errors_of("   "))


def test_several_problems_reported_together():
    xml = ('<View><Image name="image" value="image"/>'
           '<BrushLabels name="b" toName="other" safire_grid="0"></BrushLabels>'
           '<Choices name="b" toName="image"><Choice value="x"/></Choices></View>')
    problems = errors_of(xml)
    text = "\n".join(problems)
    assert 'value="$<task data key>"' in text  # Image value without $
    assert "not an <Image> tag" in text
    assert "no <Label" in text
    assert "within 2..64" in text
    assert "duplicated: 'b'" in text
    assert len(problems) >= 5


def test_smart_tag_pointing_elsewhere_and_root():
    xml = ('<View><Image name="image" value="$image"/><Image name="other" value="$x"/>'
           '<BrushLabels name="b" toName="image"><Label value="A"/><Label value="B"/></BrushLabels>'
           '<RectangleLabels name="r" toName="other" smart="true"><Label value="A"/></RectangleLabels></View>')
    problems = errors_of(xml)
    assert any('<RectangleLabels name="r">' in p and '"image"' in p for p in problems)
    assert any("root tag must be <View>" in p for p in errors_of(
        '<Foo><Image name="i" value="$i"/><BrushLabels name="b" toName="i"><Label value="A"/></BrushLabels></Foo>'))


def test_binary_needs_a_forged_label():
    problems = errors_of(config('safire_mode="binary"', ("Authentic", "Pristine")))
    assert any("forged" in p for p in problems)
    problems = errors_of(config('safire_mode="binary"', ("Forged", "Spliced", "Authentic")))
    assert any("one forged label" in p for p in problems)


def test_mode_inference_and_label_words():
    assert infer_mode(["Tampered"]) == "binary"
    assert infer_mode(["Forged", "Authentic"]) == "binary"
    assert infer_mode(["Manipulated", "Pristine"]) == "binary"
    assert infer_mode(list(SOURCES)) == "multi"
    assert infer_mode(["Splicing", "Copy-move"]) == "multi"
    assert is_forged_label("Forged") and is_forged_label("tampered region")
    assert not is_forged_label("Not forged") and is_authentic_label("Not forged")
    assert is_authentic_label("Authentic") and not is_authentic_label("Source 2")


def test_image_picked_by_brush_target_and_value_key():
    xml = ('<View><Image name="thumb" value="$thumb"/><Image name="photo" value="$photo_url"/>'
           '<BrushLabels name="b" toName="photo"><Label value="Forged"/></BrushLabels></View>')
    spec = parse_label_config(xml)
    assert (spec.image_name, spec.image_value) == ("photo", "photo_url")
    assert spec.keypoint_name is None and spec.rectangle_name is None
