"""Notebook 04 in a real browser: JupyterLab on 127.0.0.1 with a token, driven by Debian's headless
Chromium through Selenium and chromium-driver (never a downloaded browser).

Opens a copy of ``notebooks/04_interactive_sampling.ipynb``, runs it, draws a box on the canvas with a
mouse drag, picks its class, sets 8 samples at 25 steps, presses Sample (timed until the grid image
changes), presses Save and checks the saved layout file holds the drawn box within a pixel and the
saved grid is a PNG of the expected size; then moves the box with the mouse, presses Edit and checks
the new grid. It also checks what a person sees, from screenshots: slider tracks drawn at least
100 px wide with the knob at the value, remove buttons not cut, the canvas cleared when every box
is removed and nothing of the old sample under a box drawn then, and after re-running all cells
twice in the live kernel a canvas showing its sample and boxes, not a blank one. Screenshots and the timing go to ``$LAYOUTDIFFUSE_BROWSER_ARTIFACTS`` (default: the
test's temporary folder).

Then notebook 06 (a phrase model's widget: a text field instead of the class dropdown): types a phrase
into the ``text`` field, draws a box, re-phrases it in its row's field, and checks that both phrases
reach the layout (the saved layout file's ``"text"``) and that Sample draws for it.

    apt-get install -y chromium chromium-driver     # what .ci/run does when they are missing
    pytest -q -m browser tests/test_browser.py
"""
from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_interactive_sampling.ipynb"
PHRASE_NOTEBOOK = ROOT / "notebooks" / "06_text_layouts.ipynb"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CANVAS_PX = 256
STARTUP_S = 240  # generous: on a loaded 2-core machine importing JupyterLab alone took minutes
TILE = 128  # grid tiles of a 32 px model with boxes drawn: scale 4 (visualize.grid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser_tools():
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("needs Debian's chromium and chromium-driver packages: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs the selenium package (the test extra)")
    pytest.importorskip("jupyterlab", reason="needs the jupyterlab package (the notebooks extra)")
    pytest.importorskip("ipycanvas", reason="needs the ipycanvas package (the notebooks extra)")
    return webdriver


@pytest.fixture(scope="module")
def lab(tmp_path_factory, browser_tools):
    """A JupyterLab server on 127.0.0.1 serving a temporary folder with copies of notebooks 04 and 06."""
    work = tmp_path_factory.mktemp("lab")
    for notebook in (NOTEBOOK, PHRASE_NOTEBOOK):
        shutil.copy(notebook, work / notebook.name)
    token, port = secrets.token_hex(16), free_port()
    env = {**os.environ, "LAYOUTDIFFUSE_QUICK": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "JUPYTER_RUNTIME_DIR": str(work / ".runtime"), "JUPYTER_CONFIG_DIR": str(work / ".config"), "OMP_NUM_THREADS": "1"}
    log = open(work / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", f"--LabApp.workspaces_dir={work / '.workspaces'}",
         "--LabApp.expose_app_in_browser=True", "--ServerApp.allow_remote_access=False", *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited: {(work / 'lab.log').read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.3)
    else:
        server.kill()
        pytest.fail(f"JupyterLab did not listen within {STARTUP_S} s")
    yield {"url": f"http://127.0.0.1:{port}", "token": token, "dir": work}
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture(scope="module")
def driver(browser_tools):
    from selenium.webdriver.chrome.service import Service

    options = browser_tools.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,1400"):
        options.add_argument(arg)
    d = browser_tools.Chrome(service=Service(executable_path=DRIVER), options=options)
    yield d
    d.quit()


def wait_for(condition, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


EMPTY_CANVAS = (0x26, 0x26, 0x26)  # layoutdiffuse.widgets.EMPTY_CANVAS: no picture under the boxes


def pixels(element):
    """What the browser shows of ``element``: an ``(H, W, 3)`` uint8 array cut from a screenshot."""
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB"))


def canvas_pixels(canvas):
    """The drawing area of the canvas (its 1 px border cut off): ``(CANVAS_PX, CANVAS_PX, 3)``, canvas pixel coordinates."""
    shot = pixels(canvas)
    top, left = (shot.shape[0] - CANVAS_PX) // 2, (shot.shape[1] - CANVAS_PX) // 2
    return shot[top: top + CANVAS_PX, left: left + CANVAS_PX]


def check_sliders_are_drawn(driver) -> list[dict]:
    """Every x/y/w/h slider of the UI shows a track at least 100 px wide (a visible bar across it in
    the screenshot) with its knob where its value is; every remove button shows its whole icon."""
    from selenium.webdriver.common.by import By

    seen = []
    for slider in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea .widget-hslider"):
        track = slider.find_element(By.CSS_SELECTOR, ".slider-container")
        handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
        readout = float(slider.find_element(By.CSS_SELECTOR, ".widget-readout").text)
        lo, hi = driver.execute_script("const s = arguments[0].querySelector('.noUi-target').noUiSlider;"
                                       "return s ? [s.options.range.min, s.options.range.max] : [0, 1]", slider)
        shot = pixels(track).astype(int)
        band = shot[shot.shape[0] // 2 - 1: shot.shape[0] // 2 + 2]  # the rows through the bar
        drawn = (abs(band - band[:, :1].mean(0, keepdims=True)) > 8).any(-1).any(0) | (band.max(-1) < 245).any(0)
        width = track.rect["width"]
        knob = (handle.rect["x"] + handle.rect["width"] / 2 - track.rect["x"]) / width
        seen.append({"width": width, "drawn": float(drawn.mean()), "knob": knob, "value": (readout - lo) / (hi - lo)})
        assert width >= 100 and drawn.mean() > 0.8, f"a slider track is collapsed or not drawn: {seen[-1]}"
        assert abs(knob - seen[-1]["value"]) < 0.1, f"a slider's knob is not at its value: {seen[-1]}"
    assert seen, "no slider found"
    for button in driver.find_elements(By.XPATH, "//button[@title='remove this object']"):
        fits = driver.execute_script("const b = arguments[0]; return b.scrollWidth <= b.clientWidth && b.clientWidth >= 24", button)
        assert fits and not button.text.endswith(".."), "a remove button is cut"
    return seen


def test_draw_sample_save_and_edit_in_jupyterlab(lab, driver, tmp_path):
    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    artifacts = Path(os.environ.get("LAYOUTDIFFUSE_BROWSER_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    driver.get(f"{lab['url']}/lab/tree/{NOTEBOOK.name}?token={lab['token']}")
    wait_for(lambda: driver.execute_script("return !!(window.jupyterapp && document.querySelector('.jp-Notebook'))"), STARTUP_S, "the notebook to open")
    wait_for(lambda: driver.execute_script(
        "const w = window.jupyterapp.shell.currentWidget; return !!(w && w.sessionContext && w.sessionContext.session"
        " && w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle')"), STARTUP_S, "the kernel")
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")

    def widget(kind: str, label: str):
        return driver.find_element(By.XPATH, f"//div[contains(@class, 'widget-{kind}')][./label[normalize-space()='{label}']]")

    def message() -> str:
        return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea .widget-html-content"))

    def message_lines() -> list[str]:
        return [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea .widget-html-content")]

    def button(text: str):
        return driver.find_element(By.XPATH, f"//div[contains(@class, 'jp-OutputArea')]//button[normalize-space()='{text}']")

    # the last cell saves the layout and grid it sampled from code: the notebook has run
    wait_for(lambda: "saved" in message(), STARTUP_S, "notebook 04 to run (its last cell saves)")
    canvas = driver.find_element(By.CSS_SELECTOR, ".jp-OutputArea canvas")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    folder = Path(widget("text", "folder").find_element(By.TAG_NAME, "input").get_attribute("value"))
    assert (folder / "layout_000.json").exists(), folder

    def at(px: float, py: float):  # canvas pixels -> an offset from the element's centre (Selenium 4)
        return px - canvas.size["width"] / 2, py - canvas.size["height"] / 2

    def mouse_drag(start, end):
        ActionChains(driver).move_to_element_with_offset(canvas, *at(*start)).click_and_hold() \
            .move_to_element_with_offset(canvas, *at((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)) \
            .move_to_element_with_offset(canvas, *at(*end)).release().perform()

    def rows_count() -> int:
        return len(driver.find_elements(By.XPATH, "//button[@title='remove this object']"))

    before = rows_count()
    start, end = (160, 8), (244, 80)  # an empty corner of the notebook's two-digit layout
    mouse_drag(start, end)
    wait_for(lambda: rows_count() == before + 1, 10, "the drawn box to appear as a slider row")
    Select(widget("dropdown", "class").find_element(By.TAG_NAME, "select")).select_by_visible_text("4")

    def set_number(label: str, value: int) -> None:
        field = widget("text", label).find_element(By.TAG_NAME, "input")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(str(value), Keys.TAB)

    set_number("count", 8)
    set_number("steps", 25)
    grid = driver.find_element(By.CSS_SELECTOR, ".jp-OutputArea img.widget-image")
    old_src = grid.get_attribute("src")
    clicked = time.monotonic()
    button("Sample").click()
    wait_for(lambda: grid.get_attribute("src") != old_src and "sampled 8 image(s)" in message(), 240, "the 8-sample grid")
    sample_seconds = time.monotonic() - clicked
    sampled_message = next(t for t in message_lines() if t.startswith("sampled"))
    assert "25 steps" in message(), message()
    driver.save_screenshot(str(artifacts / "browser_sampled.png"))
    sliders = check_sliders_are_drawn(driver)

    button("Save").click()
    wait_for(lambda: (folder / "grid_001.png").exists() and "saved" in message(), 20, "Save to write layout_001.json and grid_001.png")
    objects = json.loads((folder / "layout_001.json").read_text())
    drawn = [o for o in objects if o["label"] == "4"]
    assert len(objects) == before + 1 and len(drawn) == 1, objects
    expected = [start[0] / CANVAS_PX, start[1] / CANVAS_PX, (end[0] - start[0]) / CANVAS_PX, (end[1] - start[1]) / CANVAS_PX]
    assert drawn[0]["box"] == pytest.approx(expected, abs=1.01 / CANVAS_PX), (drawn[0]["box"], expected)
    png = (folder / "grid_001.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    ncol = math.ceil(8**0.5)
    assert (width, height) == (ncol * (TILE + 2) + 2, math.ceil(8 / ncol) * (TILE + 2) + 2)

    # an edit: move the drawn box down by 40 px, press Edit (2 versions, to keep the test short)
    set_number("count", 2)
    box_px = [v * CANVAS_PX for v in drawn[0]["box"]]
    centre = (box_px[0] + box_px[2] / 2, box_px[1] + box_px[3] / 2)
    mouse_drag(centre, (centre[0], centre[1] + 40))
    old_src = grid.get_attribute("src")
    clicked = time.monotonic()
    button("Edit").click()
    wait_for(lambda: grid.get_attribute("src") != old_src and "edited sample 0: 2 version(s)" in message(), 240, "the edited grid")
    edit_seconds = time.monotonic() - clicked
    edited_message = next(t for t in message_lines() if t.startswith("edited"))
    assert "kept exactly" in message() and "failed" not in message(), message()
    driver.save_screenshot(str(artifacts / "browser_edited.png"))
    button("Save").click()
    wait_for(lambda: (folder / "grid_002.png").exists(), 20, "Save after the edit")
    moved = [o for o in json.loads((folder / "layout_002.json").read_text()) if o["label"] == "4"][0]["box"]
    assert moved == pytest.approx([drawn[0]["box"][0], drawn[0]["box"][1] + 40 / CANVAS_PX, *drawn[0]["box"][2:]], abs=1.01 / CANVAS_PX)
    assert (folder / "grid_002.png").read_bytes() != png
    assert not any(e.text.strip().startswith("Traceback") for e in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output"))

    # the layout changes: the sample under the boxes goes (the old picture never stays under new boxes)
    for left in range(rows_count() - 1, -1, -1):
        driver.find_element(By.XPATH, "//button[@title='remove this object']").click()
        wait_for(lambda: rows_count() == left, 10, "a remove button to remove its box")
    try:
        wait_for(lambda: (abs(canvas_pixels(canvas).astype(int) - EMPTY_CANVAS) <= 2).all(-1).mean() > 0.99, 10, "the canvas to clear when the boxes are gone")
    finally:
        Image.fromarray(pixels(canvas)).save(artifacts / "browser_canvas_cleared.png")
    new_box = (40, 40, 200, 220)
    mouse_drag(new_box[:2], new_box[2:])
    wait_for(lambda: rows_count() == 1, 10, "the new box")
    driver.save_screenshot(str(artifacts / "browser_layout_changed.png"))
    inside = canvas_pixels(canvas)[new_box[1] + 6: new_box[3] - 6, new_box[0] + 6: new_box[2] - 6].astype(int)
    assert (abs(inside - EMPTY_CANVAS) <= 2).all(-1).mean() > 0.99, "the old sample is still drawn under the new box"

    # re-running every cell in the live kernel: the new canvas shows its picture (it stayed blank in 2 of 6 re-runs)
    reruns = []
    for k in range(2):
        old_folder = str(folder)
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")

        def rerun_done():
            try:
                value = widget("text", "folder").find_element(By.TAG_NAME, "input").get_attribute("value")
                return value != old_folder and "saved" in message() and value
            except Exception:  # the old outputs are being replaced
                return False

        folder = Path(wait_for(rerun_done, STARTUP_S, f"re-run {k + 1} of the notebook"))
        canvas = driver.find_element(By.CSS_SELECTOR, ".jp-OutputArea canvas")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)

        def picture_shown():  # an undrawn canvas is one flat colour (the page's)
            shot = canvas_pixels(canvas).reshape(-1, 3)
            commonest = np.unique(shot, axis=0, return_counts=True)[1].max() / len(shot)
            spread = int(shot.max()) - int(shot.min())
            return commonest < 0.9 and spread > 100 and {"commonest_colour_share": round(float(commonest), 3), "spread": spread}

        try:
            reruns.append(wait_for(picture_shown, 15, f"the canvas to show the sample and its boxes after re-run {k + 1}"))
        finally:
            Image.fromarray(pixels(canvas)).save(artifacts / f"browser_canvas_rerun{k + 1}.png")
            driver.save_screenshot(str(artifacts / f"browser_rerun{k + 1}.png"))
    (artifacts / "browser_timing.json").write_text(json.dumps({
        "sample_8_images_25_steps_seconds": round(sample_seconds, 2), "edit_2_versions_25_steps_seconds": round(edit_seconds, 2),
        "kernel_messages": [sampled_message, edited_message], "whole_test_seconds": round(time.monotonic() - started, 1),
        "kernel_threads": 1, "sliders": sliders, "reruns": reruns}, indent=1) + "\n")


def open_and_run(driver, lab, name: str):
    """Open notebook ``name``, wait for its kernel, run all cells; returns its panel."""
    driver.get(f"{lab['url']}/lab/tree/{name}?token={lab['token']}")
    wait_for(lambda: driver.execute_script("return !!(window.jupyterapp && document.querySelector('.jp-Notebook'))"), STARTUP_S,
             f"{name} to open")
    wait_for(lambda: driver.execute_script(
        "const w = window.jupyterapp.shell.currentWidget; return !!(w && w.context && w.context.path.endsWith(arguments[0])"
        " && w.sessionContext.session && w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle')", name),
        STARTUP_S, f"the kernel of {name}")
    panel = driver.execute_script("return window.jupyterapp.shell.currentWidget.node")
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    return panel


def test_a_phrase_typed_into_the_text_field_reaches_the_layout(lab, driver, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    artifacts = Path(os.environ.get("LAYOUTDIFFUSE_BROWSER_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    panel = open_and_run(driver, lab, PHRASE_NOTEBOOK.name)

    def field(label: str):  # a described text field of the widget
        return panel.find_element(By.XPATH, f".//div[contains(@class, 'widget-text')][./label[normalize-space()='{label}']]//input")

    def message() -> str:
        return " ".join(e.text for e in panel.find_elements(By.CSS_SELECTOR, ".jp-OutputArea .widget-html-content"))

    def row_fields():  # each box's own phrase field, in row order
        return panel.find_elements(By.XPATH, ".//div[contains(@class, 'widget-gridbox')]//div[contains(@class, 'widget-text')]//input")

    def type_into(element, text: str) -> None:  # the value is sent on leaving the field (continuous_update off)
        element.send_keys(Keys.CONTROL, "a")
        element.send_keys(text, Keys.TAB)

    def ran() -> bool:
        errors = panel.find_elements(By.CSS_SELECTOR, "[data-mime-type='application/vnd.jupyter.error']")
        assert not errors, f"notebook 06 failed: {errors[0].text[-1500:]}"
        return "saved" in message()

    try:
        wait_for(ran, STARTUP_S, "notebook 06 to run (its last cell saves)")
    finally:
        driver.save_screenshot(str(artifacts / "browser_phrases_opened.png"))
    assert "Traceback" not in panel.text
    folder = Path(field("folder").get_attribute("value"))
    before = len(row_fields())
    assert before == 2 and [f.get_attribute("value") for f in row_fields()] == ["a blue seven", "2 in blue"]
    canvas = panel.find_element(By.CSS_SELECTOR, ".jp-OutputArea canvas")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)

    type_into(field("text"), "the 4 is cyan")  # the phrase of the next box drawn
    start, end = (150, 6), (240, 70)  # an empty corner of the notebook's layout
    at = lambda px, py: (px - canvas.size["width"] / 2, py - canvas.size["height"] / 2)  # noqa: E731
    ActionChains(driver).move_to_element_with_offset(canvas, *at(*start)).click_and_hold() \
        .move_to_element_with_offset(canvas, *at(195, 40)).move_to_element_with_offset(canvas, *at(*end)).release().perform()
    wait_for(lambda: len(row_fields()) == before + 1, 10, "the drawn box to appear as a row")
    assert row_fields()[-1].get_attribute("value") == "the 4 is cyan"
    panel.find_element(By.XPATH, ".//div[contains(@class, 'jp-OutputArea')]//button[normalize-space()='Save']").click()
    wait_for(lambda: (folder / "layout_001.json").exists() and "layout_001.json" in message(), 20, "Save to write layout_001.json")
    objects = json.loads((folder / "layout_001.json").read_text())
    expected = [start[0] / CANVAS_PX, start[1] / CANVAS_PX, (end[0] - start[0]) / CANVAS_PX, (end[1] - start[1]) / CANVAS_PX]
    assert objects[:2] == [{"text": "a blue seven", "box": [0.05, 0.1, 0.4, 0.6]}, {"text": "2 in blue", "box": [0.55, 0.3, 0.4, 0.6]}]
    assert objects[2]["text"] == "the 4 is cyan" and objects[2]["box"] == pytest.approx(expected, abs=1.01 / CANVAS_PX), objects

    type_into(row_fields()[-1], "a magenta  four")  # re-phrase the drawn box in its own row
    wait_for(lambda: field("text").get_attribute("value") == "a magenta  four", 10, "the text field to show the selected box's phrase")
    grid = panel.find_element(By.CSS_SELECTOR, ".jp-OutputArea img.widget-image")
    old_src = grid.get_attribute("src")
    panel.find_element(By.XPATH, ".//div[contains(@class, 'jp-OutputArea')]//button[normalize-space()='Sample']").click()
    wait_for(lambda: grid.get_attribute("src") != old_src and "sampled" in message(), 240, "the grid sampled for the phrases")
    assert "failed" not in message(), message()
    panel.find_element(By.XPATH, ".//div[contains(@class, 'jp-OutputArea')]//button[normalize-space()='Save']").click()
    wait_for(lambda: (folder / "grid_002.png").exists() and "grid_002.png" in message(), 20, "Save after sampling")
    assert [o["text"] for o in json.loads((folder / "layout_002.json").read_text())] == ["a blue seven", "2 in blue", "a magenta four"]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    driver.save_screenshot(str(artifacts / "browser_phrases.png"))
