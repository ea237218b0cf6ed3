"""`pathology view` in a real browser: headless Chromium (Debian's `chromium`, installed by .ci/run)
loads a slide's viewer page from a server on 127.0.0.1; OpenSeadragon draws the slide, switching
the task overlay changes the picture where the attention says it must, a listed patch takes the
view to it, and the page logs no JavaScript error.

Chromium is driven over its DevTools protocol on a pipe (``--remote-debugging-pipe``: commands on
fd 3, replies on fd 4, NUL-terminated JSON), so no driver or websocket package is needed."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time

import h5py
import numpy as np
import pytest
from PIL import Image

from pathology.view.server import ViewServer
from tests.pathology.test_view import QUOTED, SLIDE_ID, make_ihc_folder, make_run_folder
from tests.pathology.test_view_ihc import COLOURS, MPP, make_ki67_folder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH, HEIGHT = 1280, 800
# CI installs chromium (.ci/run); elsewhere a missing browser skips instead of failing
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium is not installed")


class Chromium:
    """One headless Chromium with a fresh profile, and one page of it."""

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-pipe", "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}")

    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        commands_r, commands_w = os.pipe()
        replies_r, replies_w = os.pipe()
        args = [CHROMIUM, *self.FLAGS, f"--user-data-dir={self.profile}", "about:blank"]
        # the shell puts the pipes where chromium expects them: it reads fd 3 and writes fd 4
        script = "exec " + shlex.join(args) + " 3<&0 4>&1 </dev/null >/dev/null"
        self.process = subprocess.Popen(["/bin/sh", "-c", script], stdin=commands_r, stdout=replies_w,
                                        stderr=subprocess.DEVNULL)
        os.close(commands_r)
        os.close(replies_w)
        self.commands, self.replies = os.fdopen(commands_w, "wb", 0), os.fdopen(replies_r, "rb", 0)
        self.buffer, self.last_id, self.events = b"", 0, []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", self.session)
        self.send("Emulation.setDeviceMetricsOverride", self.session, width=WIDTH, height=HEIGHT,
                  deviceScaleFactor=1, mobile=False)

    def _message(self) -> dict:
        while b"\0" not in self.buffer:
            chunk = self.replies.read(1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.commands.write(json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", self.session, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, seconds: float = 60) -> None:
        end = time.monotonic() + seconds
        while not self.evaluate(expression):
            assert time.monotonic() < end, f"timed out waiting for {expression}"
            time.sleep(0.1)

    def screenshot(self) -> np.ndarray:
        data = self.send("Page.captureScreenshot", self.session, format="png")["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))

    def errors(self) -> list[str]:
        """JavaScript exceptions, console errors and failed loads the page reported."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(json.dumps(params["args"])[:500])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"{params['entry']['text']} {params['entry'].get('url', '')}")
        return found

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            self.send("Browser.close")
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.commands.close()
        self.replies.close()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    chromium = Chromium()
    yield chromium
    chromium.close()


IDLE = "window.viewerState && viewerState.idle && viewerState.idle()"


def screen_point(browser: Chromium, x: float, y: float) -> tuple[int, int]:
    """Where level-0 pixel (x, y) is on the page."""
    return tuple(browser.evaluate(f"""(() => {{
        const v = viewerState.viewer, W = viewerState.width;
        const p = v.viewport.pixelFromPoint(new OpenSeadragon.Point({x} / W, {y} / W), true);
        const r = v.container.getBoundingClientRect();
        return [Math.round(r.left + p.x), Math.round(r.top + p.y)];
    }})()"""))


def choose_layer(browser: Chromium, name: str) -> None:
    browser.evaluate(f"""(() => {{
        const select = document.getElementById("layer");
        select.value = [...select.options].find((o) => o.text === {json.dumps(name)}).value;
        select.dispatchEvent(new Event("change"));
    }})()""")
    browser.wait(IDLE)


def test_viewer_page_draws_the_slide_and_switches_task_overlays(browser, tmp_path):
    out = make_run_folder(tmp_path)
    with h5py.File(out / "attention" / f"{SLIDE_ID}.h5") as f:
        coords = f["coords"][:]
    size = 256                                                       # level-0 px of a patch (128 px at 0.5 µm/px)
    left, right = coords[np.argmin(coords[:, 0])] + size // 2, coords[np.argmax(coords[:, 0])] + size // 2
    with ViewServer(out, port=0) as server:
        browser.send("Page.navigate", browser.session, url=f"{server.url}view/{QUOTED}")
        browser.wait(IDLE)
        first = browser.screenshot()
        Image.fromarray(first).save(tmp_path / "viewer.png")
        assert browser.evaluate("document.getElementById('layer').selectedOptions[0].text") == "er attention"
        osd = browser.evaluate("(() => { const r = document.getElementById('osd').getBoundingClientRect();"
                               " return [r.left, r.top, r.width, r.height]; })()")
        view = first[int(osd[1]):int(osd[1] + osd[3]), int(osd[0]):int(osd[0] + osd[2])].astype(int)
        # the canvas shows the slide: stained tissue (saturated) on glass (near white)
        saturation = view.max(axis=2) - view.min(axis=2)
        assert 0.05 < (saturation > 40).mean() < 0.9 and (view.min(axis=2) > 200).mean() > 0.1

        # the overlay alone at full opacity: jet's red where attention is highest, blue where lowest
        browser.evaluate("['show-boxes', 'show-tissue'].forEach((id) => document.getElementById(id).click());"
                         "const o = document.getElementById('opacity'); o.value = 100;"
                         "o.dispatchEvent(new Event('input'));")
        colours = {}
        for layer in ("er attention", "tumor attention"):
            choose_layer(browser, layer)
            shot = browser.screenshot()
            Image.fromarray(shot).save(tmp_path / f"{layer.split()[0]}.png")
            colours[layer] = [shot[y, x].astype(int) for x, y in (screen_point(browser, *left),
                                                                   screen_point(browser, *right))]
        er_left, er_right = colours["er attention"]
        tumor_left, tumor_right = colours["tumor attention"]
        assert er_left[0] > 100 > er_left[2] and er_right[2] > 100 > er_right[0], colours   # er falls to the right
        assert tumor_right[0] > 100 > tumor_right[2] and tumor_left[2] > 100 > tumor_left[0], colours
        changed = np.abs(shot.astype(int) - first.astype(int)).max(axis=2) > 30
        assert changed.mean() > 0.01
        # the colour scale: by rank, the bar says so
        browser.evaluate("const c = document.getElementById('scale'); c.value = 'rank';"
                         "c.dispatchEvent(new Event('change'));")
        browser.wait(IDLE)
        assert "rank" in browser.evaluate("document.querySelector('#colourbar .label').textContent")

        # a listed highest-attention patch takes the view to it
        box = browser.evaluate("(() => { const li = document.querySelector('#extremes li');"
                               " li.click(); const b = viewerState.selected; return [b.x, b.y, b.w, b.h]; })()")
        browser.wait(IDLE)
        cx, cy = screen_point(browser, box[0] + box[2] / 2, box[1] + box[3] / 2)
        assert abs(cx - (osd[0] + osd[2] / 2)) < 3 and abs(cy - (osd[1] + osd[3] / 2)) < 3
        assert browser.evaluate("document.querySelector('#scalebar .text').textContent").endswith("µm")
    assert browser.errors() == []


def test_slide_list_page_loads_without_errors(browser, tmp_path):
    out = make_run_folder(tmp_path)
    with ViewServer(out, port=0) as server:
        browser.send("Page.navigate", browser.session, url=server.url)
        browser.wait("document.readyState === 'complete'")
        assert browser.evaluate("document.querySelectorAll('table.slides tbody tr').length") == 2
        browser.evaluate("document.querySelector('table.slides a[href^=\"/view/\"]').click()")
        browser.wait(IDLE)
        assert browser.evaluate("location.pathname") == f"/view/{QUOTED}"
        # report.html, served by the viewer, shows its links to the viewer pages
        browser.send("Page.navigate", browser.session, url=f"{server.url}report.html")
        browser.wait("!!document.body && document.body.classList.contains('viewer-on')")
        assert browser.evaluate("getComputedStyle(document.querySelector('.viewer-link')).display") == "inline"
    assert browser.errors() == []



def test_ihc_page_shows_tile_scores_and_draws_named_shapes(browser, tmp_path):
    out = make_ihc_folder(tmp_path)
    with ViewServer(out, port=0) as server:
        browser.send("Page.navigate", browser.session, url=f"{server.url}view/field")
        browser.wait(IDLE)
        options = browser.evaluate("[...document.getElementById('layer').options].map((o) => o.text)")
        assert options == ["none", "% positive", "H-score"]
        browser.evaluate("document.getElementById('show-nuclei').click()")     # the nuclei off: the shape alone
        browser.wait(IDLE)
        assert browser.evaluate("viewerState.viewer.world.getItemCount()") == 1
        choose_layer(browser, "% positive")
        # one fixed colour scale: no scale to choose
        assert browser.evaluate("getComputedStyle(document.getElementById('scale-row')).display") == "none"
        before = browser.screenshot()
        browser.evaluate("const box = document.querySelector('#shapes input'); box.click();")
        browser.wait("Object.keys(viewerState.shapes).length === 1")
        browser.wait(IDLE)
        x, y = screen_point(browser, 100.5, 200.5)                 # the one nucleus, drawn in its class colour
        after = browser.screenshot()
        assert tuple(after[y, x]) == (230, 0, 30) and tuple(before[y, x]) != (230, 0, 30)
    assert browser.errors() == []


def fit(browser: Chromium, x: float, y: float, w: float, h: float) -> None:
    """Show the level-0 box (x, y, w, h), at once."""
    browser.evaluate(f"""viewerState.viewer.viewport.fitBounds(new OpenSeadragon.Rect({x} / viewerState.width,
        {y} / viewerState.width, {w} / viewerState.width, {h} / viewerState.width), true) && null""")
    # two frames: OpenSeadragon asks for the new view's tiles on its next update, until then it is "loaded"
    browser.evaluate("new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() => done(null))))")
    browser.wait(IDLE)


def close_to(pixel: np.ndarray, colour: tuple[int, int, int], tolerance: int = 12) -> bool:
    return bool(np.abs(pixel.astype(int) - colour).max() <= tolerance)


def test_ihc_page_draws_nuclei_by_class_the_hotspot_and_the_roi(browser, tmp_path):
    """A Ki-67 result scored in an ROI: the nuclei layer is on, draws each nucleus of the cells table
    in its class colour (a ring just outside it, close up) and toggles off; the hotspot is circled
    in magenta and its entry takes the view to it; the ROI is outlined in green."""
    out = make_ki67_folder(tmp_path)
    record = json.loads((out / "slide.json").read_text())
    with open(out / "cells" / "slide.csv") as fh:
        cells = [(float(r["x"]), float(r["y"]), int(r["class"]), float(r["area_um2"])) for r in csv.DictReader(fh)]
    with ViewServer(out, port=0) as server:
        browser.send("Page.navigate", browser.session, url=f"{server.url}view/slide")
        browser.wait(IDLE)
        Image.fromarray(browser.screenshot()).save(tmp_path / "ki67.png")
        assert browser.evaluate("document.getElementById('layer').value") == "-1"   # opens on the nuclei
        assert browser.evaluate("viewerState.viewer.world.getItemCount()") == 2
        legend = browser.evaluate("[...document.querySelectorAll('#nuclei .legend')].map((e) => e.textContent)")
        assert legend == [f"{name}: {count}" for name, count in zip(
            ("negative", "1+ weak", "2+ moderate", "3+ strong"), record["class_counts"].values())]

        # close up on a 3+ nucleus and a 1+ one: each ringed in its class colour, 1 px outside it
        for wanted in (3, 1):
            x, y, _, area = next(c for c in cells if c[2] == wanted and 300 < c[0] < 900 and 300 < c[1] < 900)
            fit(browser, x - 60, y - 40, 120, 80)
            r = np.sqrt(area / np.pi) / MPP
            shot = browser.screenshot()
            # the ring lies between the nucleus's radius and 2 px outside it, about its centre pixel
            ring = [screen_point(browser, int(x) + 0.5 + sx * (round(2 * r) / 2 + 1), int(y) + 0.5)
                    for sx in (-1, 1)]
            assert all(close_to(shot[py, px], COLOURS[wanted]) for px, py in ring), (wanted, ring)
            cx, cy = screen_point(browser, int(x) + 0.5, int(y) + 0.5)
            assert not any(close_to(shot[cy, cx], c, 40) for c in COLOURS)      # the nucleus itself shows
            if wanted == 3:
                Image.fromarray(shot).save(tmp_path / "nuclei_3plus.png")
                browser.evaluate("document.getElementById('show-nuclei').click()")
                browser.wait(IDLE)
                assert browser.evaluate("viewerState.viewer.world.getItemCount()") == 1
                off = browser.screenshot()
                assert not any(close_to(off[py, px], COLOURS[3], 40) for px, py in ring)
                browser.evaluate("document.getElementById('show-nuclei').click()")
                browser.wait(IDLE)

        # the hotspot's entry takes the view to it: its centre in the middle, its circle magenta
        spot = record["hotspot"]
        browser.evaluate("document.getElementById('hotspot').click()")
        browser.wait(IDLE)
        osd = browser.evaluate("(() => { const r = document.getElementById('osd').getBoundingClientRect();"
                               " return [r.left, r.top, r.width, r.height]; })()")
        cx, cy = screen_point(browser, *spot["centre_level0"])
        assert abs(cx - (osd[0] + osd[2] / 2)) < 3 and abs(cy - (osd[1] + osd[3] / 2)) < 3
        shot = browser.screenshot()
        Image.fromarray(shot).save(tmp_path / "hotspot.png")
        radius = spot["radius_um"] / record["mpp_level0"]
        for angle in (0.3, 2.0, 4.0):
            px, py = screen_point(browser, spot["centre_level0"][0] + radius * np.cos(angle),
                                  spot["centre_level0"][1] + radius * np.sin(angle))
            assert close_to(shot[py, px], (230, 0, 200), 30), angle
        # the ROI's left edge (x = 100 level-0 px) is green where the hotspot view shows it
        px, py = screen_point(browser, 100, 600)
        assert osd[0] < px and close_to(shot[py, px], (0, 200, 60), 30)
        browser.evaluate("document.getElementById('show-roi').click()")
        browser.wait(IDLE)
        assert not close_to(browser.screenshot()[py, px], (0, 200, 60), 30)
    assert browser.errors() == []
