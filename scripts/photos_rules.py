"""Photo selection rules of ``scripts/install_photos.py``: the by-eye :data:`EXCLUDE` list, the
scene :data:`GROUPS` and :data:`LANDMARKS` (one split per scene), the :data:`WEIGHTS`, and the
fingerprint that tells when an installed package must be redone (:func:`rules_fingerprint`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from typing import Dict, Optional

#: Bump when the selection or conversion logic changes in a way that must redo installed packages.
RULES_VERSION = 4


# ---------------------------------------------------------------------------------------------
# Exclusions: reviewed by eye on contact sheets (see docs/photos.md). Patterns are fnmatch-style
# and match candidate names. Everything listed here is NOT a usable real photograph.
# ---------------------------------------------------------------------------------------------

def _names(package: str, why: str, *stems: str) -> Dict[str, str]:
    return {f"{package}--{s}": why for s in stems}


RENDER = "render / digital art, not a photograph"
DRAWING = "drawing / graphic, not a photograph"
EXCLUDE: Dict[str, str] = {
    # plasma-workspace-wallpapers: 30 wallpapers, 11 photographs
    **_names("plasma-workspace-wallpapers", RENDER, "Altai", "Canopee", "Cascade", "Cluster",
             "Elarun", "Flow", "FlyingKonqui", "Honeywave", "IceCold", "Kay", "Kokkini",
             "MilkyWay", "Opal", "PastelHills", "Patak", "SafeLanding", "Shell", "Volna"),
    "plasma-workspace-wallpapers--Autumn": "painting",
    # mate-backgrounds: 28 files, 12 photographs
    **_names("mate-backgrounds", RENDER, "Arc-Colors-Transparent-Wallpaper", "Float-into-MATE",
             "Flow", "GreenTraditional", "Gulp", "MATE-Stripes-Dark", "MATE-Stripes-Light",
             "Silk", "Spring", "Stripes", "Ubuntu-Mate-Cold-no-logo", "Ubuntu-Mate-Dark-no-logo",
             "Ubuntu-Mate-Radioactive-no-logo", "Ubuntu-Mate-Warm-no-logo", "Waves"),
    "mate-backgrounds--Elephants": "painting",
    # lomiri-wallpapers*: 21 files, 15 photographs
    **_names("lomiri-wallpapers", RENDER, "lomiri-default-background", "warty-final-ubuntu"),
    "lomiri-wallpapers-16.04--umang_by_Abhishek_Mudgal": RENDER,
    **_names("lomiri-wallpapers-20.04", RENDER, "Fossa_by_Jasper_Roks",
             "Infinite-Sea_by_Aury88", "Painting-Colors_by__herobrine7gamer"),
    # lxqt-themes wallpapers: 24 files, 11 photographs
    **_names("lxqt-themes", RENDER, "kde-plasma", "lxqt-origami-green", "origami-bright-logo",
             "origami-dark", "origami-light", "plasma-logo-bright", "plasma-logo-dark",
             "plasma_arch", "simple_blue_widescreen", "triangles-logo", "triangles", "waves-logo",
             "waves-purple-logo"),
    # tuxpaint-data: the 19 templates and the skyline starter background are all photographs
    # opencv-doc sample data: 150 files, 50 photographs kept
    "opencv-doc--ela_modified": "a deliberately forged image (ELA demo): never a clean host",
    **_names("opencv-doc", RENDER, "Blender_Suzanne1", "Blender_Suzanne2", "WindowsLogo", "blox"),
    **_names("opencv-doc", DRAWING, "HappyFish", "LinuxLogo", "cards", "chessboard",
             "detect_blob", "digits", "ellipses", "gradient", "ml", "notes", "opencv-logo",
             "opencv-logo-white", "pic1", "pic2", "pic3", "pic4", "pic5", "pic6", "templ", "tmpl",
             "mask", "fuzzy-input", "fuzzy-mask1", "fuzzy-mask2", "fuzzy-mask3",
             "ximgproc-peilin_plane", "ximgproc-peilin_shape", "ximgproc-polygonstanfordoutput",
             "imageTextN", "imageTextR"),
    "opencv-doc--shape-data-shape_sample-*": "binary shape mask",
    "opencv-doc--text-scenetext_segmented_word0?_mask": "binary text mask",
    "opencv-doc--text-scenetext_char0?": "tiny crop",
    "opencv-doc--text-scenetext_word0?": "small crop of a word",
    "opencv-doc--aloeGT": "disparity map",
    "opencv-doc--starry_night": "painting",
    "opencv-doc--ximgproc-stanford": "map screenshot",
    **_names("opencv-doc", "synthetic blur / document, not a natural photo", "text_defocus",
             "text_motion", "licenseplate_motion", "pca_test1", "reg-LR_05", "reg-LR_06"),
    # the stereo-calibration series: one chessboard scene 26 times; two kept (left02, left06)
    **_names("opencv-doc", "calibration series: near-duplicates of one scene", "left01",
             "left03", "left04", "left05", "left07", "left08", "left09", "left11", "left12",
             "left13", "left14"),
    "opencv-doc--right[01]?": "calibration series: near-duplicates of one scene",
    # tuxpaint-stamps-default: 779 PNG stamps with alpha; the photographic cut-outs are kept
    "tuxpaint-stamps-default--*cartoon*": DRAWING,
    "tuxpaint-stamps-default--*_mirror": "mirrored copy of another stamp",
    "tuxpaint-stamps-default--symbols-*": DRAWING + " (letters, signs, chess, math, music)",
    "tuxpaint-stamps-default--town-flags-*": DRAWING,
    "tuxpaint-stamps-default--town-roadsigns-*": DRAWING,
    "tuxpaint-stamps-default--clothes-*": DRAWING,
    "tuxpaint-stamps-default--space-planets-*": "planet render / composite",
    **_names("tuxpaint-stamps-default", DRAWING, "animals-insects-bee", "animals-insects-fly",
             "animals-mammals-aquatic-orca", "animals-mammals-aquatic-whale",
             "animals-mammals-echidna", "animals-mammals-hedgehog",
             "animals-mammals-rhino_black", "household-arttools-highlighter",
             "household-dishes-mug", "medical-tooth", "people-body_parts-eye", "food-pizza",
             "seasonal-christmas-Santa", "seasonal-christmas-bow", "seasonal-christmas-candy_cane",
             "seasonal-christmas-hard_candy", "seasonal-christmas-santahat",
             "seasonal-christmas-star", "seasonal-christmas-stocking", "seasonal-christmas-tree",
             "seasonal-christmas-xmas_tp_bulb", "seasonal-easter-bluebird",
             "seasonal-easter-bunny-egg", "seasonal-easter-bunny-head", "seasonal-easter-bunny",
             "seasonal-easter-butterfly", "seasonal-easter-chick-hatched",
             "seasonal-easter-chick-in-egg", "seasonal-easter-chick", "seasonal-easter-daffodil",
             "seasonal-halloween-bat_left", "seasonal-halloween-blackcat",
             "seasonal-halloween-jackolantern_mean", "seasonal-halloween-skull",
             "seasonal-halloween-spider", "seasonal-hanukkah-*", "seasonal-newyears-*",
             "town-monuments-inukshuk-outline", "vehicles-7spoke256",
             "vehicles-emergency-sedan_police", "vehicles-ship-chineseJunk"),
    **_names("tuxpaint-stamps-default", "render / not clearly a photograph",
             "naturalforces-explosion", "naturalforces-fire", "space-voyager2",
             "space-moon-moon_crescent"),
    # enlightenment-data: 23 .edj backgrounds (19 with an embedded JPEG), 14 photographs
    **_names("enlightenment-data", RENDER, "Dunes", "Flat-Fan", "Flat-Stone-Pattern",
             "Sunset-Hills"),
    "enlightenment-data--Paper-Flower": "flat paper texture",
    # gcompris-qt-data: 882 images in 186 .rcc files; 320 pass the automatic checks (opaque,
    # >= 200 px); paintings, drawings and puzzle fragments are excluded here
    "gcompris-qt-data--babyshapes--*": "painting / puzzle fragment",
    "gcompris-qt-data--paintings--*": "painting",
    **_names("gcompris-qt-data", "painting", "details--image-Eglise_dAuvers-sur-Oise_background",
             "details--image-Gogh4_background", "details--image-PortraitOfPereTanguy_background",
             "details--image-Van_Gogh_The_Night_Cafe_background",
             "details--image-VincentVanGogh0012_background",
             "details--image-VincentVanGogh0013_background",
             "details--image-VincentVanGogh0019_background",
             "details--image-VincentVanGoghBridge_background"),
    **_names("gcompris-qt-data", DRAWING, "digital_electricity--texture01",
             "digital_electricity--texture02", "louis-braille--chart",
             "louis-braille--night_printing", "louis-braille--braille_ball"),
}

#: Photos of one scene (stereo pairs, the same object from two positions): one split for all.
GROUPS: Dict[str, str] = {
    **{f"opencv-doc--{n}": "opencv-doc--aero" for n in ("aero1", "aero3")},
    **{f"opencv-doc--{n}": "opencv-doc--aloe" for n in ("aloeL", "aloeR")},
    **{f"opencv-doc--{n}": "opencv-doc--basketball" for n in ("basketball1", "basketball2")},
    **{f"opencv-doc--{n}": "opencv-doc--box" for n in ("box", "box_in_scene")},
    **{f"opencv-doc--{n}": "opencv-doc--graf" for n in ("graf1", "graf3")},
    **{f"opencv-doc--{n}": "opencv-doc--left-right" for n in ("left", "right")},
    **{f"opencv-doc--{n}": "opencv-doc--leuven" for n in ("leuvenA", "leuvenB")},
    **{f"opencv-doc--{n}": "opencv-doc--rubberwhale" for n in ("rubberwhale1", "rubberwhale2")},
    **{f"opencv-doc--{n}": "opencv-doc--calib" for n in ("left02", "left06")},
}

#: Landmarks photographed for several GCompris activities: one group per landmark, in case two
#: activities use the same photograph (cropped differently, so the hash check would miss it).
LANDMARKS = ("eiffel", "tajmahal", "brandenburg", "pyramid", "colosseum", "statueofliberty",
             "mountrushmore", "christtheredeemer", "greatwall", "opera", "chenonceau",
             "neuschwanstein", "victoriamemorial", "minar", "capitol", "louvre", "lemusee")


def _group_of(name: str) -> str:
    if name in GROUPS:
        return GROUPS[name]
    if name.startswith("gcompris-qt-data--"):
        low = name.lower().replace("_", "")
        for key in LANDMARKS:
            if key in low:
                return f"gcompris-qt-data--landmark-{key}"
    return name


#: Relative weights (host/donor probability); default 1.0. Keys are fnmatch patterns.
WEIGHTS: Dict[str, float] = {
    # product shots on a plain white background: real photos, but mostly flat background
    "gcompris-qt-data--categorization--images-tools-*": 0.5,
    "gcompris-qt-data--categorization--images-others-*": 0.5,
    "enlightenment-data--Foggy-Trees": 0.3,  # a real photo, but almost uniform dark fog
    "opencv-doc--left02": 0.3, "opencv-doc--left06": 0.3, "opencv-doc--sudoku": 0.5,
    "lomiri-wallpapers-16.04--analogpattern_by_Peter_Nerlich": 0.5,
}


def excluded(name: str) -> Optional[str]:
    for pat, why in EXCLUDE.items():
        if fnmatch.fnmatchcase(name, pat):
            return why
    return None


def rules_fingerprint(package: str, max_side: int) -> str:
    rules = sorted((k, v) for k, v in EXCLUDE.items() if k.startswith(package + "--"))
    groups = sorted((k, v) for k, v in GROUPS.items() if k.startswith(package + "--"))
    groups.append(("landmarks", ",".join(LANDMARKS)))
    weights = sorted((k, v) for k, v in WEIGHTS.items() if k.startswith(package + "--"))
    blob = json.dumps([RULES_VERSION, max_side, rules, groups, weights])
    return hashlib.sha1(blob.encode()).hexdigest()[:16]
