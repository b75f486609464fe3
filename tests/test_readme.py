"""The README stays true to the code: settings table, commands, referenced files."""

import re
from pathlib import Path

from ml_backend.settings import SETTINGS, settings_table_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_settings_table_is_the_one_the_code_renders():
    m = re.search(r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", README, re.S)
    assert m, "README.md lost its settings-table markers"
    assert m.group(1) == settings_table_markdown(), "run: python scripts/update_readme_settings.py"
    for s in SETTINGS:
        assert f"`{s.env}`" in m.group(1)


def test_the_two_setup_commands_and_ci_agree():
    assert "make serve" in README and "make test" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), ".ci/run must call the README's test command"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^serve:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_files_the_readme_names_exist():
    names = set(re.findall(r"`((?:docs|label_config|benchmarks|scripts|tests|safire|training|ml_backend)/[\w./-]+)`", README))
    assert names, "expected the README to name project files"
    missing = sorted(n for n in names if not (ROOT / n.rstrip("/")).exists())
    assert not missing, f"README names files that do not exist: {missing}"
