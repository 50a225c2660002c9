"""docs/azure.md documents every azd variable the templates read and the commands it tells people to run."""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "azure.md").read_text()


def test_every_azd_variable_of_the_parameters_file_is_documented():
    params = json.loads((ROOT / "infra" / "main.parameters.json").read_text())["parameters"]
    variables = {re.match(r"\$\{([A-Z0-9_]+)", p["value"]).group(1) for p in params.values()}
    assert len(variables) > 10
    assert sorted(v for v in variables if f"`{v}`" not in DOC) == []


def test_the_doc_covers_up_down_costs_existing_workspaces_roles_and_limitations():
    for heading in ("## `azd up`", "## `azd down --purge`", "## What it costs", "## An existing workspace", "## Roles",
                    "## Known limitations"):
        assert heading in DOC
    assert "azd down --purge" in DOC and "Flex Consumption baseline" in DOC and "Online endpoint deployments" in DOC


def test_readme_links_to_it():
    assert "(docs/azure.md)" in (ROOT / "README.md").read_text()
