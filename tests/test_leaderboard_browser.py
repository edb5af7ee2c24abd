"""The leaderboard app served on loopback and driven in headless Chromium (Debian's /usr/bin/chromium).

Set ``HUBSTAB_SCREENSHOTS=DIR`` to keep the screenshots the test takes.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _leaderboard_records import SPACE_DIR, measure, mlp, quick_linear, random_cnn, write_records

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
MAIN_GROUP = "fashion_mnist [test] | custom (delta=1px cut=3 linear mean)"

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


def _serve(command: list[str], cwd: Path, log: Path, env: dict[str, str], port: int):
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for(url, proc, log)
    except BaseException:
        proc.kill()
        raise
    return proc, url


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HUBSTAB_RESULTS", "HF_TOKEN")}
    return {**env, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HOME": str(root / "hf")}


def _shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("HUBSTAB_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """``hubstab leaderboard`` on loopback over real measurements: trained and untrained models, two groups,
    a submitted file, a run from local folders, and two hostile files."""
    root = tmp_path_factory.mktemp("leaderboard")
    trained = [
        measure(quick_linear(0, steps=60), "fmnist/linear-60-steps", pretrained=True, sweep=True),
        measure(quick_linear(1, steps=6), "fmnist/linear-6-steps", pretrained=True),
        measure(quick_linear(2, steps=40, hidden=32), "fmnist/mlp-40-steps", pretrained=True),
    ]
    untrained = [
        measure(random_cnn(1), "fmnist/smallcnn-init-seed1", pretrained=False, layers=True),
        measure(mlp(3), "fmnist/mlp-init-seed3", pretrained=False),
        measure(random_cnn(6), MARKUP_NAME, pretrained=False),
    ]
    submitted = measure(quick_linear(3, steps=20), "someone/linear-20-steps", pretrained=True)
    local = measure(quick_linear(4, steps=30), "/home/someone/models/my-cnn", pretrained=True)
    local["config"].update(dataset=str(root / "data" / "fashion-mnist-test"), split="train")
    results = root / "results"
    write_records(results, [*trained, *untrained, local])
    write_records(results / "submissions", [submitted])
    hostile = copy.deepcopy(trained[0])
    hostile["config"]["model_name"] = MARKUP_NAME
    hostile["results"]["relative_stability"] = "NaN"
    (results / "hostile.json").write_text(json.dumps(hostile))
    (results / "huge-integer.json").write_text('{"schema_version": ' + "9" * 5000 + "}")
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "hubstab.cli",
        "leaderboard",
        "--results",
        str(results),
        "--port",
        str(port),
    ]
    proc, url = _serve(command, root, root / "app.log", _env(root), port)
    try:
        yield url, {"trained": [*trained, submitted], "untrained": untrained, "local": local}, root
    finally:
        _stop(proc)


_ROWS_JS = """sel => Array.from(document.querySelectorAll(sel + ' [role=row]'))
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


def _names(records: list[dict]) -> list[str]:
    return [
        r["config"]["model_name"] for r in sorted(records, key=lambda r: r["results"]["relative_stability"])
    ]


def _browser(p, tmp_path):
    return p.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1500, "height": 1300},
    )


def test_leaderboard_in_chromium(board, tmp_path):
    from playwright.sync_api import sync_playwright

    url, records, root = board
    trained = records["trained"]
    bad = copy.deepcopy(trained[0])
    bad["results"]["relative_stability"] = "NaN"
    bad_path = tmp_path / "bad.json"
    bad_path.write_text(json.dumps(bad))
    new = measure(quick_linear(7, steps=12), "fmnist/linear-12-steps", pretrained=True)
    good_path = tmp_path / "good.json"
    good_path.write_text(json.dumps(new))

    dialogs: list[str] = []
    with sync_playwright() as p:
        context = _browser(p, tmp_path)
        try:
            page = context.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(url)
            page.wait_for_function(
                "() => document.querySelector('#leaderboard-table')?.innerText.includes('linear-60-steps')"
            )

            # the default group is the one with the most trained models; ranks 1..n within it, by R_f;
            # no model at initialisation among them
            rows = page.evaluate(_ROWS_JS, "#leaderboard-table")
            assert [row[1] for row in rows] == _names(trained)
            assert [row[0] for row in rows] == [str(i) for i in range(1, len(trained) + 1)]
            assert MAIN_GROUP in page.locator("#group input").input_value()
            table_text = page.locator("#leaderboard-table").inner_text()
            assert "init" not in table_text and "bold" not in table_text
            # hub ids are links to their pages; the submitted row says so
            link = page.locator("#leaderboard-table a[href='https://huggingface.co/fmnist/linear-60-steps']")
            assert link.count() == 1 and link.inner_text() == "fmnist/linear-60-steps"
            submitted_row = next(r for r in rows if r[1] == "someone/linear-20-steps")
            assert "submitted" in submitted_row and "board" in rows[0] + rows[-1]
            # every column shown is explained
            legend = page.locator("#column-legend").inner_text()
            assert "relative stability R_f = D_f / G_f" in legend and "Source" in legend
            # no path of the machines that ran or serve the board, anywhere on the page
            body = page.locator("body").inner_text()
            assert str(root) not in body and "/tmp/" not in body and "/home/" not in body
            _shot(page, tmp_path, "leaderboard.png")

            # models at initialisation: shown apart on request, never ranked
            page.locator("#show-init input").check()
            page.wait_for_function(
                "() => document.querySelector('#init-table')?.innerText.includes('smallcnn-init-seed1')"
            )
            init_rows = page.evaluate(_ROWS_JS, "#init-table")
            init_names = sorted(row[0] for row in init_rows if row[0] != "Model")
            assert init_names == sorted(r["config"]["model_name"] for r in records["untrained"])
            assert [row[0] for row in page.evaluate(_ROWS_JS, "#leaderboard-table")] == [
                str(i) for i in range(1, len(trained) + 1)
            ]
            assert page.locator("img[src='x']").count() == 0 and page.evaluate("() => window.__xss") is None
            _shot(page, tmp_path, "at-initialisation.png")

            # the other group: the run from local folders, by folder names only
            page.locator("#group input").click()
            page.get_by_role("option", name="fashion-mnist-test [train]", exact=False).click()
            page.wait_for_function(
                "() => document.querySelector('#leaderboard-table')?.innerText.includes('my-cnn')"
            )
            rows = page.evaluate(_ROWS_JS, "#leaderboard-table")
            assert [row[:2] for row in rows] == [["1", "my-cnn"]]
            assert "fashion-mnist-test [train]" in rows[0]
            assert page.locator("#leaderboard-table a").count() == 0  # a local model has no hub page
            body = page.locator("body").inner_text()
            assert str(root) not in body and "/home/someone" not in body

            # hostile files are skipped, each with its reason, shown as text
            page.locator("#skipped").get_by_text("Skipped files").click()
            page.wait_for_function(
                "() => document.querySelector('#skipped-table')?.innerText.includes('hostile.json')"
            )
            skipped = page.locator("#skipped-table").inner_text()
            assert "results.relative_stability: must be a number, got the string 'NaN'" in skipped
            assert "huge-integer.json" in skipped
            assert page.evaluate("() => window.__xss") is None
            _shot(page, tmp_path, "skipped.png")

            # the plot: untrained points drawn differently and not fitted; every group's fit on request
            page.get_by_role("tab", name="Error vs stability").click()
            page.wait_for_selector("#law-plot canvas")
            page.wait_for_function(f"({_INK_JS})() > 50")
            fit_text = page.locator("#law-text textarea").input_value()
            assert "fashion-mnist-test [train]" in fit_text  # the group chosen above
            page.locator("#all-groups input").check()
            page.wait_for_function(
                "() => document.querySelector('#law-text textarea')?.value.includes('each with its own fit')"
            )
            fit_text = page.locator("#law-text textarea").input_value()
            assert f"{MAIN_GROUP}: eps = a sqrt(R_f): a = " in fit_text
            assert f"n = {len(trained)})" in fit_text
            page.wait_for_timeout(1500)  # let the chart finish drawing before the screenshot
            _shot(page, tmp_path, "plot.png")

            # About: the paper's link, BibTeX, rendered formulas, protocols
            page.get_by_role("tab", name="About").click()
            page.wait_for_selector("#about .katex")
            assert page.locator("#about a[href='https://arxiv.org/abs/2105.02468']").count() >= 1
            about = page.locator("#about").inner_text()
            assert "@inproceedings{petrini2021relative" in about
            assert page.locator("#about .katex").count() > 5
            assert "custom (delta=1px cut=3 linear mean)" in page.locator("#protocols").inner_text()
            _shot(page, tmp_path, "about.png")

            # a bad submission is rejected with the reason; a good one joins its group, marked as submitted
            page.get_by_role("tab", name="Submit").click()
            assert "no results repo with a write token" in page.locator("body").inner_text()
            status = page.locator("#submission-status textarea")
            page.locator("#upload input[type=file]").set_input_files(str(bad_path))
            page.wait_for_timeout(300)
            page.locator("#submit-file").click()
            page.wait_for_function(
                "() => document.querySelector('#submission-status textarea')?.value.startsWith('Rejected')"
            )
            assert (
                "results.relative_stability: must be a number, got the string 'NaN'" in status.input_value()
            )
            page.locator("#upload button[aria-label='Clear']").click()
            page.locator("#upload input[type=file]").set_input_files(str(good_path))
            page.wait_for_timeout(300)
            page.locator("#submit-file").click()
            page.wait_for_function(
                "() => document.querySelector('#submission-status textarea')?.value.startsWith('Accepted')"
            )
            assert "shown in this session only" in status.input_value()
            page.locator("#request").click()
            page.wait_for_function(
                "() => document.querySelector('#submission-status textarea')?.value.startsWith('Not requested')"
            )
            page.get_by_role("tab", name="Leaderboard").click()
            page.locator("#group input").click()
            page.get_by_role("option", name=MAIN_GROUP, exact=False).click()
            page.wait_for_function(
                "() => document.querySelector('#leaderboard-table')?.innerText.includes('linear-12-steps')"
            )
            rows = page.evaluate(_ROWS_JS, "#leaderboard-table")
            assert [row[1] for row in rows] == _names([*trained, new])
            assert [row[0] for row in rows] == [str(i) for i in range(1, len(trained) + 2)]
            assert any(
                "this session" in cell for cell in next(r for r in rows if r[1] == "fmnist/linear-12-steps")
            )

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


@pytest.mark.slow
def test_space_folder_starts_an_empty_board_in_chromium(tmp_path):
    """The Space folder alone (``python app.py``, no results source): an empty board with instructions."""
    from playwright.sync_api import sync_playwright

    space = tmp_path / "space"
    shutil.copytree(SPACE_DIR, space, ignore=shutil.ignore_patterns("__pycache__"))
    port = _free_port()
    env = {k: v for k, v in _env(tmp_path).items() if k != "PYTHONPATH"}
    env.update(GRADIO_SERVER_PORT=str(port))
    proc, url = _serve([sys.executable, "app.py"], space, tmp_path / "app.log", env, port)
    try:
        with sync_playwright() as p:
            context = _browser(p, tmp_path)
            try:
                page = context.new_page()
                page.goto(url)
                page.wait_for_selector("#empty-board")
                page.wait_for_function(
                    "() => document.querySelector('#results-status textarea')?.value.includes('no results source')"
                )
                text = page.locator("#empty-board").inner_text()
                assert "This board has no results yet" in text and "HUBSTAB_RESULTS" in text
                assert page.evaluate(_ROWS_JS, "#leaderboard-table") == []
                page.wait_for_timeout(1000)  # let the page settle before the screenshot
                _shot(page, tmp_path, "empty.png")
            finally:
                context.close()
    finally:
        _stop(proc)
