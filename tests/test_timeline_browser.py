"""``timeline --html`` seen in a real browser: headless Chromium renders the page of a burst of
1,000 pilots made by the bundle, and the rendered DOM is checked — every pilot's bar and phase
marks drawn where the events put them, sorting and filtering working, no console error.

A screenshot is kept as a test artifact in build/test-artifacts/ (PILOTLOG_SCREENSHOT=PATH
writes it elsewhere, e.g. docs/timeline.png for the README).
"""

import json
import os
import random
import shutil

import pytest

from helpers import ROOT, unavailable
from pilotlogger.events import make_event

PHASES = ("boot", "os", "power", "install", "match", "shutdown")
SITES = ("LCG.CERN.cern", "LCG.RAL.uk", "LCG.CNAF.it", "LCG.GRIDKA.de", "DIRAC.Demo.org")
T0 = 1795842000.0  # 2026-11-28T05:00:00Z


def burst(n: int, seed: int = 7) -> list:
    """Events of ``n`` pilots: most run the whole lifecycle, some stop at install (an error) or
    at nomatch; a few log lines each.  Deterministic."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        pilot = "%08x-0000-4000-8000-%012x" % (i, i)
        site = SITES[i % len(SITES)]
        fate = rng.random()
        phases = list(PHASES[:4]) + (
            ["install"] if fate < 0.05 else ["nomatch"] if fate < 0.25 else ["match", "shutdown"]
        )
        at = rng.uniform(0, 3600)
        for seq, phase in enumerate(phases, 1):
            at += rng.uniform(0.1, 120)
            failed = fate < 0.05 and seq == len(phases)
            events.append(
                make_event(
                    phase,
                    "install failed: disk full" if failed else "%s of pilot %d" % (phase, i),
                    "error" if failed else "info",
                    pilot=pilot,
                    seq=seq,
                    epoch=T0 + at,
                    context={"site": site},
                )
            )
        events.append(make_event("log", "a log line", pilot=pilot, seq=len(phases) + 1, epoch=T0 + at))
    return events


@pytest.fixture(scope="module")
def chromium():
    for tool in ("chromium", "chromedriver"):
        if not shutil.which(tool):
            unavailable("%s is not installed (make test installs it: apt-get install chromium chromium-driver)" % tool)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (make venv installs it)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


# Measures every row once, in the browser: what was actually laid out, not what the HTML says.
MEASURE = """
return Array.prototype.map.call(document.querySelectorAll('#lifecycles tbody tr'), function (r) {
  var marks = Array.prototype.filter.call(r.querySelectorAll('circle.mark'), function (c) {
    var box = c.getBoundingClientRect(); return box.width > 0 && box.height > 0;
  });
  var span = r.querySelector('line.span');
  return {pilot: r.dataset.pilot, hidden: r.hidden, marks: marks.map(function (c) { return c.dataset.phase; }),
          xs: marks.map(function (c) { return c.getBoundingClientRect().left; }),
          span: span ? span.getBoundingClientRect().width : 0, last: r.dataset.last, site: r.dataset.site,
          duration: parseFloat(r.dataset.duration)};
});
"""


def test_timeline_page_in_chromium(chromium, pilotlog, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    events = burst(1000)
    source = tmp_path / "day.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for e in events))
    page = tmp_path / "timeline.html"
    p = pilotlog("timeline", "--json", "--html", str(page), str(source))
    assert p.returncode == 0, p.stderr
    expected = {x["pilot"]: x for x in json.loads(p.stdout)["pilots"]}
    assert len(expected) == 1000

    chromium.get(page.as_uri())
    rows = chromium.execute_script(MEASURE)
    assert len(rows) == 1000 and not any(r["hidden"] for r in rows)
    for row in rows:  # every phase of every pilot drawn, in time order, with its bar
        phases = [s["phase"] for s in expected[row["pilot"]]["phases"]]
        assert row["marks"] == phases, row["pilot"]
        assert row["xs"] == sorted(row["xs"]) and row["span"] > 0, row
        assert row["last"] == expected[row["pilot"]]["last_phase"]

    errors = [entry for entry in chromium.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], errors

    # Filtering: by last phase, by site, by a search on the pilot id; the counter follows.
    Select(chromium.find_element(By.ID, "f-phase")).select_by_value("install")
    shown = [r for r in chromium.execute_script(MEASURE) if not r["hidden"]]
    assert shown and len(shown) == sum(1 for x in expected.values() if x["last_phase"] == "install")
    assert chromium.find_element(By.ID, "shown").text == str(len(shown))
    Select(chromium.find_element(By.ID, "f-site")).select_by_value("LCG.RAL.uk")
    shown = [r for r in chromium.execute_script(MEASURE) if not r["hidden"]]
    assert shown and all(r["last"] == "install" and r["site"] == "LCG.RAL.uk" for r in shown)
    Select(chromium.find_element(By.ID, "f-phase")).select_by_value("")
    Select(chromium.find_element(By.ID, "f-site")).select_by_value("")
    search = chromium.find_element(By.ID, "f-pilot")
    search.send_keys("000003e7")  # pilot 999
    assert [r["pilot"] for r in chromium.execute_script(MEASURE) if not r["hidden"]] == [
        "000003e7-0000-4000-8000-0000000003e7"
    ]
    search.clear()  # clear() fires no input event: send one, as typing would
    chromium.execute_script("document.getElementById('f-pilot').dispatchEvent(new Event('input'))")
    assert not any(r["hidden"] for r in chromium.execute_script(MEASURE))

    # Sorting: by duration, then the other way round.
    header = chromium.find_element(By.CSS_SELECTOR, "th[data-sort=duration]")
    header.click()
    durations = [r["duration"] for r in chromium.execute_script(MEASURE)]
    assert durations == sorted(durations)
    header.click()
    assert [r["duration"] for r in chromium.execute_script(MEASURE)] == sorted(durations, reverse=True)

    artifact = os.environ.get("PILOTLOG_SCREENSHOT") or str(ROOT / "build" / "test-artifacts" / "timeline.png")
    os.makedirs(os.path.dirname(artifact), exist_ok=True)
    chromium.find_element(By.CSS_SELECTOR, "th[data-sort=start]").click()
    assert chromium.save_screenshot(artifact) and os.path.getsize(artifact) > 10000
