"""The host imports and indexes function_app on every cold start: no heavy SDK may come with it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("azure.ai.ml", "xgboost", "azure.data.tables", "azure.eventgrid", "azure.monitor")

CODE = f"""
import json, sys
import function_app
functions = function_app.app.get_functions()
heavy = {HEAVY!r}
loaded = sorted({{h for h in heavy for m in sys.modules if m == h or m.startswith(h + ".")}})
print(json.dumps({{"functions": len(functions), "loaded": loaded}}))
"""


def test_importing_and_indexing_function_app_loads_no_heavy_sdk():
    out = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["functions"] > 0, "indexing found no functions"
    assert result["loaded"] == [], f"imported at module level on the cold-start path: {result['loaded']}"
