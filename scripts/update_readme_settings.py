"""Rewrite the README's settings table from ml_backend.settings (the test checks they match).

    python scripts/update_readme_settings.py
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ml_backend.settings import settings_table_markdown  # noqa: E402

START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def main() -> int:
    path = ROOT / "README.md"
    text = path.read_text()
    if START not in text or END not in text:
        print(f"README.md lacks the markers {START} / {END}", file=sys.stderr)
        return 1
    new = re.sub(re.escape(START) + r".*?" + re.escape(END),
                 lambda m: f"{START}\n{settings_table_markdown()}\n{END}", text, flags=re.S)
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
