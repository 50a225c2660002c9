"""`mlops` as a process: the console script's entry point exits with the documented codes and one clear line."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    return subprocess.run([sys.executable, "-c", "from shared.opscli import main; main()", *args], cwd=ROOT,
                          capture_output=True, text=True, env={**clean, "COLUMNS": "200", **env}, timeout=120)


def test_a_bad_setting_exits_2_with_one_line_and_no_traceback():
    r = _run("status", MLOPS_BACKEND="cloud")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: MLOPS_BACKEND must be one of local, azure, not 'cloud'"


def test_check_config_exits_2_listing_every_problem_and_0_when_all_is_well(tmp_path):
    bad = _run("check-config", MLOPS_COOLDOWN_MINUTES="-5", MLOPS_ALERT_AUTH="maybe", MLOPS_HOME=str(tmp_path))
    assert bad.returncode == 2 and "2 error(s)" in bad.stderr
    assert "MLOPS_COOLDOWN_MINUTES" in bad.stderr and "MLOPS_ALERT_AUTH" in bad.stderr
    good = _run("check-config", MLOPS_HOME=str(tmp_path))
    assert good.returncode == 0 and "settings ok (backend local)" in good.stdout


def test_usage_errors_exit_2():
    assert _run("lineage").returncode == 2  # a missing argument
    assert _run("no-such-command").returncode == 2
