"""The leaderboard app served on loopback and driven in headless Chromium (Debian's /usr/bin/chromium)."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _leaderboard_records import measure, mlp, quick_linear, random_cnn, write_records

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MARKUP_NAME = '<img src=x onerror="window.__xss=1"><b>bold</b>'

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,  # a Gradio server and Chromium: out of the fast path (README, "Tests")
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"the app did not answer at {url} within {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``hubstab leaderboard`` on loopback over real measurements (one with markup in its model name)."""
    root = tmp_path_factory.mktemp("leaderboard")
    records = [
        measure(quick_linear(steps=40), "fmnist/linear-trained", pretrained=True, sweep=True),
        measure(random_cnn(1), "fmnist/smallcnn-init-seed1", pretrained=False, layers=True),
        measure(random_cnn(2), "fmnist/smallcnn-init-seed2", pretrained=False),
        measure(mlp(3), "fmnist/mlp-init-seed3", pretrained=False),
        measure(random_cnn(6), MARKUP_NAME, pretrained=False),
    ]
    write_records(root / "results", records)
    port = _free_port()
    log = root / "app.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HOME": str(root / "hf"),
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hubstab.cli",
                "leaderboard",
                "--results",
                str(root / "results"),
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for(url, proc, log)
        yield url, records, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


_ROWS_JS = """() => Array.from(document.querySelectorAll('#leaderboard-table [role=row]'))
    .map(r => Array.from(r.children).map(c => c.innerText.trim()))
    .filter(cells => cells.length > 2 && cells[1] !== '' && cells[1] !== 'Model')"""

_INK_JS = """() => {
    const c = document.querySelector('#law-plot canvas');
    if (!c || c.width === 0) return -1;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let colored = 0;
    for (let i = 0; i < d.length; i += 4) {
        const [r, g, b, a] = [d[i], d[i + 1], d[i + 2], d[i + 3]];
        if (a > 200 && Math.max(r, g, b) - Math.min(r, g, b) > 80) colored++;
    }
    return colored;
}"""


def test_leaderboard_in_chromium(served, tmp_path):
    from playwright.sync_api import sync_playwright

    url, records, _root = served
    expected = [
        r["config"]["model_name"] for r in sorted(records, key=lambda r: r["results"]["relative_stability"])
    ]
    bad = copy.deepcopy(records[0])
    bad["results"]["relative_stability"] = "NaN"
    bad_path = tmp_path / "bad.json"
    bad_path.write_text(json.dumps(bad))
    new = measure(mlp(7), "fmnist/mlp-init-seed7", pretrained=False)
    good_path = tmp_path / "good.json"
    good_path.write_text(json.dumps(new))

    dialogs: list[str] = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1300},
        )
        try:
            page = context.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(url)
            page.wait_for_function(
                "n => document.querySelectorAll('#leaderboard-table [role=row]').length > n", arg=len(records)
            )
            page.wait_for_function(
                "() => document.querySelector('#leaderboard-table').innerText.includes('linear')"
            )

            # the models, in order of R_f; markup in a name is shown as text, never as HTML
            rows = page.evaluate(_ROWS_JS)
            assert [row[1] for row in rows] == expected
            assert [row[0] for row in rows] == [str(i) for i in range(1, len(records) + 1)]
            assert page.locator("#leaderboard-table img").count() == 0
            assert page.locator("#leaderboard-table b").count() == 0
            assert page.evaluate("() => window.__xss") is None
            page.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True)

            # search narrows the table
            search = page.get_by_label("Search models")
            search.fill("smallcnn")
            search.press("Enter")
            page.wait_for_function(
                "() => !document.querySelector('#leaderboard-table').innerText.includes('linear-trained')"
            )
            assert [row[1] for row in page.evaluate(_ROWS_JS)] == [m for m in expected if "smallcnn" in m]
            search.fill("")
            search.press("Enter")

            # the plot renders: a Vega canvas with coloured points, and the fit in words
            page.get_by_role("tab", name="Error vs stability").click()
            page.wait_for_selector("#law-plot canvas")
            page.wait_for_function(f"({_INK_JS})() > 50")
            fit_text = page.locator("#law-text textarea").input_value()
            # by default random initialisations are plotted but not fitted
            untrained = sum(r["config"]["pretrained"] is False for r in records)
            trained = len(records) - untrained
            assert "eps = a sqrt(R_f): a = " in fit_text and f"(n = {trained})" in fit_text
            assert f"{untrained} untrained model(s) plotted, not fitted" in fit_text
            page.get_by_label("Fit untrained models too").check()
            page.wait_for_function(
                f"() => document.querySelector('#law-text textarea').value.includes('n = {len(records)}')"
            )
            fit_text = page.locator("#law-text textarea").input_value()
            assert "eps = a sqrt(R_f): a = " in fit_text and "not fitted" not in fit_text
            page.screenshot(path=str(tmp_path / "plot.png"), full_page=True)

            # a bad submission is rejected with the reason; a good one joins the table
            page.get_by_role("tab", name="Submit").click()
            status = page.locator("#submission-status textarea")
            page.locator("#upload input[type=file]").set_input_files(str(bad_path))
            page.wait_for_timeout(300)
            page.locator("#submit-file").click()
            page.wait_for_function(
                "() => document.querySelector('#submission-status textarea').value.startsWith('Rejected')"
            )
            assert (
                "results.relative_stability: must be a number, got the string 'NaN'" in status.input_value()
            )
            page.screenshot(path=str(tmp_path / "rejected.png"), full_page=True)
            page.locator("#upload button[aria-label='Clear']").click()
            page.locator("#upload input[type=file]").set_input_files(str(good_path))
            page.wait_for_timeout(300)
            page.locator("#submit-file").click()
            page.wait_for_function(
                "() => document.querySelector('#submission-status textarea').value.startsWith('Accepted')"
            )
            page.get_by_role("tab", name="Leaderboard").click()
            page.wait_for_function(
                "() => document.querySelector('#leaderboard-table').innerText.includes('mlp-init-seed7')"
            )
            names = [row[1] for row in page.evaluate(_ROWS_JS)]
            all_records = sorted([*records, new], key=lambda r: r["results"]["relative_stability"])
            assert names == [r["config"]["model_name"] for r in all_records]

            # the run with markup in its name, in the details tab: still text
            page.get_by_role("tab", name="Model details").click()
            page.locator("#detail-run input").click()
            page.get_by_role("option", name=MARKUP_NAME).first.click()
            page.wait_for_function(
                "name => document.body.innerText.includes(name + ' on fashion_mnist')", arg=MARKUP_NAME
            )
            assert page.locator("img[src='x']").count() == 0
            assert page.evaluate("() => window.__xss") is None
        finally:
            context.close()
    assert dialogs == []
    print(f"screenshots in {tmp_path}")
