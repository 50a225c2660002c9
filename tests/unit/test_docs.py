"""README and docs/ document every setting the code reads and every function the app exposes."""
from pathlib import Path

from shared.config import SETTING_NAMES

ROOT = Path(__file__).resolve().parents[2]
# The front door and the pages it links to: a setting documented in docs/ counts.
README = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def test_readme_lists_every_setting():
    missing = [name for name in SETTING_NAMES if f"`{name}`" not in README]
    assert missing == []


def test_readme_lists_every_function(indexed_functions):
    missing = [name for name in indexed_functions if f"`{name}`" not in README]
    assert missing == []
