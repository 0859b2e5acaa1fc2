#!/usr/bin/env python3
"""Opens a quantsmith HTML report in headless Chromium (Debian's chromium + chromedriver, driven
by Selenium) and prints one JSON line of what a person would see: console errors, resources
fetched, the points of each depth plot, the table's SQNR column before and after clicking its
header once and twice; and saves a screenshot. Called by tests/integration/ci.rs.

  html_check.py REPORT.html SCREENSHOT.png
"""
import json
import os
import sys
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def main():
    page, shot = Path(sys.argv[1]).resolve(), sys.argv[2]
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("QS_CHROMIUM", "/usr/bin/chromium")
    profile = tempfile.mkdtemp(prefix="qs-chromium-")
    # no sandbox (CI runs as root), and none of Chromium's own network traffic (the machine
    # has no internet: its connections would be refused, and the page must not need any)
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,2400"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(os.environ.get("QS_CHROMEDRIVER", "/usr/bin/chromedriver"))
    d = webdriver.Chrome(service=service, options=opts)
    try:
        d.get(page.as_uri())
        out = {"title": d.title}
        out["resources"] = d.execute_script(
            "return performance.getEntriesByType('resource').map(function(e){return e.name;});")
        plots = {}
        for svg in d.find_elements(By.CSS_SELECTOR, "svg.plot"):
            series = {}
            for g in svg.find_elements(By.CSS_SELECTOR, "g.series"):
                series[g.get_attribute("data-kind")] = [
                    int(c.get_attribute("data-layer")) for c in g.find_elements(By.CSS_SELECTOR, "circle.pt")]
            plots[svg.get_attribute("id")] = series
        out["plots"] = plots
        heads = d.find_elements(By.CSS_SELECTOR, "#tensor-table thead th")
        names = [h.text.strip() for h in heads]
        col = names.index("SQNR dB")

        def column():
            return d.execute_script(
                "var t=document.getElementById('tensor-table');"
                "return Array.prototype.map.call(t.tBodies[0].rows,function(r){"
                "return [r.cells[0].textContent, r.cells[arguments[0]].getAttribute('data-v')];});".replace(
                    "arguments[0]", str(col)))

        out["rows_before"] = column()
        heads[col].click()
        out["rows_ascending"] = column()
        out["sort_state_1"] = heads[col].get_attribute("aria-sort")
        heads[col].click()
        out["rows_descending"] = column()
        out["sort_state_2"] = heads[col].get_attribute("aria-sort")
        heads[0].click()
        out["names_sorted"] = [r[0] for r in column()]
        out["console"] = [{"level": e["level"], "message": e["message"]} for e in d.get_log("browser")]
        d.save_screenshot(shot)
        out["ok"] = True
        print(json.dumps(out))
    finally:
        d.quit()


if __name__ == "__main__":
    main()
