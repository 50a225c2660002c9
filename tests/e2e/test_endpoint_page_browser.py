"""The endpoint page in a real headless Chromium (Selenium driving Debian's chromium and chromium-driver): real
lineage made by the served app (land → train → gate → approve → deploy, a rejection, a drift check), the page
loaded over real HTTP as a signed-in person, its elements read back, and a screenshot kept as a test artifact.

Runs wherever chromium is installed; in CI (CI=true) a missing browser fails the test instead of skipping it.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from shared.config import Settings
from shared.local import cli
from shared.local.churn import feature_rows, write_csv
from shared.local.serving import score

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ENDPOINT = "churn-endpoint"
# A hostile approver: the name reaches the model's tags, the lineage graph and the audit timeline.
EVE = "Eve <img src=x onerror=alert(1)><script>document.title='pwned'</script>"
HOSTILE_REASON = "</li><b id='injected'>bold</b> & \"quoted\""


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    why = "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why}: CI must install them (.ci/run does when it runs as root)")
    pytest.skip(why)


def _wait(predicate, what: str, stack, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.grid.drain(timeout=5)
        stack.runtime.workspace.wait_for_jobs(timeout=5)
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _decide(stack, decision: str, reason: str) -> None:
    state = stack.runtime.states.load(ENDPOINT)
    r = httpx.post(f"{stack.host.url}/api/approvals/{state.candidate.approval_id}", headers={"X-Local-User": EVE},
                   json={"decision": decision, "reason": reason}, timeout=120)
    assert r.status_code == 202, r.text


@pytest.fixture
def story(tmp_path, monkeypatch):
    """The served app with a model approved by EVE and deployed, a second one rejected with a hostile reason."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLOPS_WORKSPACE", raising=False)
    env = {"MLOPS_HOME": str(tmp_path / "home"), "MLOPS_MIN_PRIMARY": "0.6", "MLOPS_APPROVAL": "manual",
           "MLOPS_APPROVERS": EVE, "MLOPS_APPROVAL_AUTH": "easyauth"}
    stack = cli.local_stack(Settings.from_env(env), port=0, easy_auth=True)
    try:
        for version, seed in (("1", 7), ("2", 11)):
            stack.runtime.workspace.land("landing", f"churn/{version}/customers.csv",
                                         write_csv(tmp_path / f"v{version}.csv", rows=1500, seed=seed))
            _wait(lambda: (s := stack.runtime.states.load(ENDPOINT)) is not None and s.candidate is not None,
                  f"model {version} to wait for approval", stack)
            if version == "1":
                _decide(stack, "approve", "first model, metrics fine")
                _wait(lambda: stack.runtime.workspace.get_endpoint(ENDPOINT) is not None
                      and stack.runtime.workspace.get_endpoint(ENDPOINT).traffic.get("churn-model-v1") == 100,
                      "model 1 to serve", stack)
            else:
                _decide(stack, "reject", HOSTILE_REASON)
        yield stack
    finally:
        stack.close()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,2200"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _artifact(name: str) -> Path:
    folder = Path(os.environ.get("MLOPS_ARTIFACTS") or ROOT / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def test_the_endpoint_page_shows_lineage_traffic_audit_and_drift_in_chromium(story, browser):
    from selenium.webdriver.common.by import By

    url = f"{story.host.url}/api/endpoints/{ENDPOINT}/page"
    browser.get(url)  # no one signed in: the page says so and shows nothing of the endpoint
    assert "needs a signed-in person" in browser.find_element(By.ID, "status").text
    assert "churn-model" not in browser.page_source

    # Sign in as the simulated App Service Authentication does it locally: the header names the person.
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"X-Local-User": EVE}})
    browser.get(url)
    assert browser.title == f"{ENDPOINT}: lineage and rollout", "nothing injected ran"
    assert browser.find_elements(By.TAG_NAME, "script") == [] and browser.find_elements(By.TAG_NAME, "img") == []
    assert browser.find_elements(By.ID, "injected") == []
    assert browser.find_element(By.ID, "reader").text == f"Signed in as {EVE}"

    # The lineage graph: one row of five nodes for the one deployed model, in order.
    nodes = browser.find_elements(By.CSS_SELECTOR, "#lineage-graph g.node")
    assert [n.get_attribute("data-kind") for n in nodes] == ["data", "job", "model", "deployment", "approver"]
    names = [n.find_element(By.CSS_SELECTOR, "text.node-name").text for n in nodes]
    assert names[:4] == ["churn:1", "train-churn-v1-a1", "churn-model:1", "churn-endpoint/churn-model-v1"]
    assert names[4].startswith("user:Eve <img")  # the hostile name, as text
    approver = browser.find_element(By.CSS_SELECTOR, "table.lineage tr[data-kind='approver'] td.name")
    assert approver.text == f"user:{EVE}"
    assert story.runtime.workspace.get_model("churn-model", "1").tags["approved_by"] == f"user:{EVE}"

    # Rollout state and traffic, against the live endpoint and state record.
    live = story.runtime.workspace.get_endpoint(ENDPOINT).traffic
    weights = {c.get_attribute("data-deployment"): c.text for c in browser.find_elements(By.CSS_SELECTOR, "td.weight")}
    assert weights == {name: f"{w}%" for name, w in live.items() if w} == {"churn-model-v1": "100%"}
    rollout = browser.find_element(By.ID, "rollout").text
    assert f"Phase {story.runtime.states.load(ENDPOINT).phase.value}" in rollout and "Stable churn-model-v1" in rollout
    assert "churn-model-v1 100%" in browser.find_element(By.ID, "history").text

    # The audit timeline: every decision about the endpoint, the hostile reason shown as text.
    records = story.runtime.audit.recent(limit=100, subject=ENDPOINT)
    entries = browser.find_elements(By.CSS_SELECTOR, "#audit li.audit-entry")
    assert [e.get_attribute("data-decision") for e in entries] == [r.decision for r in records]
    [rejected] = [e for e in entries if e.get_attribute("data-decision") == "reject_model"]
    assert rejected.find_element(By.CSS_SELECTOR, ".reason").text.endswith(HOSTILE_REASON)
    assert browser.find_elements(By.ID, "drift") == [], "no drift section before any drift finding"

    # Drifted traffic, one monitor pass: the page grows a drift section with the measured value.
    with httpx.Client() as client:
        for i in range(12):
            score(story.runtime.workspace, ENDPOINT, feature_rows(5, seed=i, drift=1.0), client=client)
    [report] = cli.check_drift(story.runtime)
    story.grid.drain(timeout=30)
    browser.get(url)
    drift = browser.find_element(By.ID, "drift")
    [value] = [c.text for c in drift.find_elements(By.CSS_SELECTOR, "#drift-table td.value")]
    assert value == f"{report.event['data']['value']:.3f}"
    assert len(drift.find_elements(By.CSS_SELECTOR, "rect.drift-bar")) == 1

    shot = _artifact("endpoint-page.png")
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"\nendpoint page screenshot: {shot}")
