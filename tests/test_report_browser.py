"""The explain report in a real browser: headless Chromium loads it from a file, every image decodes, the
console stays clean and the screenshot is not blank. Skipped with a reason when Chromium is not installed,
except in CI (CI=true), where .ci/run installs it and its absence fails the run.

GATEDRNN_SCREENSHOT=path also saves the full-page screenshot there (how docs/img/ is made).
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    if os.environ.get("CI") == "true":  # .ci/run installs them: in CI a missing browser is a failure, not a skip
        raise RuntimeError(f"CI=true but headless Chromium is missing ({CHROMIUM}, {CHROMEDRIVER}); "
                           ".ci/run should have installed chromium and chromium-driver")
    pytest.skip(f"headless Chromium is not installed (looked for {CHROMIUM} and {CHROMEDRIVER}; "
                "on Debian: apt-get install chromium chromium-driver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from PIL import Image  # noqa: E402

from gatedrnn.models import SequenceRegressor  # noqa: E402
from gatedrnn.report import write_explain_report  # noqa: E402
from gatedrnn.tasks.adding import make_adding  # noqa: E402


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    models = {}
    for seed, (label, cell) in enumerate((("RNN", "rnn"), ("LSTM", "lstm"), ("GRU", "gru"))):
        torch.manual_seed(seed)
        models[label] = SequenceRegressor(2, 8, 1, cell=cell)
    x, y = make_adding(16, 24, torch.Generator().manual_seed(0))
    history = {label: [{"step": s, "train_loss": 1.0 / (1 + s)} for s in range(5)] for label in models}
    return write_explain_report(models, x, y, tmp_path_factory.mktemp("browser") / "report.html",
                                task_name="adding", loss_fn=F.mse_loss, history=history)


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="gatedrnn-chromium-")
    for flag in FLAGS + (f"--user-data-dir={profile}", "--window-size=1100,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_report_renders_in_headless_chromium(report_path, browser):
    browser.get(report_path.resolve().as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt]);")
    assert len(images) == 9
    for complete, width, height, alt in images:
        assert complete and width > 300 and height > 150, alt
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(r => r.name);")
    assert [name for name in fetched if not name.startswith("data:")] == [], "the page fetches nothing"
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
    assert browser.execute_script("return document.title").startswith("Inside the cells")

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1100, min(int(height) + 40, 16000))
    png = browser.get_screenshot_as_png()
    picture = Image.open(io.BytesIO(png)).convert("L")
    pixels = np.asarray(picture, dtype=float)
    assert pixels.shape[0] > 2000, "the whole page was captured"
    assert pixels.std() > 20, f"the screenshot looks blank (pixel std {pixels.std():.1f})"
    rows_with_content = (pixels.std(axis=1) > 5).mean()
    assert rows_with_content > 0.3, f"only {rows_with_content:.0%} of rows have content"
    target = os.environ.get("GATEDRNN_SCREENSHOT")
    if target:
        with open(target, "wb") as stream:
            stream.write(png)
