"""README documents every setting the code reads and every function the app exposes."""
from pathlib import Path

from shared.config import SETTING_NAMES

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_lists_every_setting():
    missing = [name for name in SETTING_NAMES if f"`{name}`" not in README]
    assert missing == []


def test_readme_lists_every_function(indexed_functions):
    missing = [name for name in indexed_functions if f"`{name}`" not in README]
    assert missing == []
