"""A headless Chromium for the view tests, driven over the DevTools protocol (a websocket on
127.0.0.1, through the `websocket-client` package).

The browser runs in its own process group with a private profile folder, is bounded in time
(every wait has a deadline) and is killed on ``close()``. It loads local files only: a page
that asks for anything else is recorded in ``requests`` (the tests assert there is none).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

INSTALL_HINT = (
    "the view tests need Chromium: on Debian/Ubuntu `apt-get update && apt-get install -y chromium` "
    "(CI's .ci/run installs it), or point MINDSCOPE_CHROMIUM at a Chromium/Chrome binary; "
    "MINDSCOPE_SKIP_BROWSER_TESTS=1 skips these tests explicitly"
)

#: Upper bounds on waiting (seconds): generous, for a loaded 2-core machine; they stop a hang,
#: they do not measure speed.
START_TIMEOUT = 120.0
COMMAND_TIMEOUT = 60.0


def find_chromium() -> str | None:
    """The browser binary: $MINDSCOPE_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH."""
    env = os.environ.get("MINDSCOPE_CHROMIUM")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class HeadlessBrowser:
    """One Chromium with one page; ``evaluate`` runs JavaScript there, ``hover`` moves the
    mouse through the browser's input pipeline (real mouse events, as a user's), and
    ``screenshot`` saves a PNG of the whole page."""

    def __init__(self, binary: str, profile: Path, width: int = 1200, height: int = 900):
        import websocket  # the `websocket-client` package (test extra)

        profile.mkdir(parents=True, exist_ok=True)
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a previous run's port: wait for this browser's own
        self._proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: close() ends the browser and its helpers
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
                if self._proc.poll() is not None:
                    raise BrowserError(f"chromium exited with status {self._proc.returncode} while starting")
                if time.monotonic() > deadline:
                    raise BrowserError(f"chromium did not open its DevTools port within {START_TIMEOUT:.0f} s")
                time.sleep(0.1)
            port, path = port_file.read_text().splitlines()[:2]
            self._ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=COMMAND_TIMEOUT,
                                                   suppress_origin=True)
            self._next_id = 0
            self.events: list[dict[str, Any]] = []
            target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Network"):
                self.call(f"{domain}.enable")
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise

    # --- protocol ---------------------------------------------------------------------------
    def _call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._ws.send(json.dumps(msg))
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while time.monotonic() < deadline:
            reply = json.loads(self._ws.recv())
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)
        raise BrowserError(f"{method}: no reply within {COMMAND_TIMEOUT:.0f} s")

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A DevTools command on the page."""
        return self._call(method, params, self._session)

    def wait_for_event(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while time.monotonic() < deadline:
            for e in self.events:
                if e["method"] == method:
                    self.events.remove(e)
                    return e
            e = json.loads(self._ws.recv())
            if "method" in e:
                self.events.append(e)
        raise BrowserError(f"no {method} within {COMMAND_TIMEOUT:.0f} s")

    # --- what the tests use -------------------------------------------------------------------
    def open(self, path: Path) -> None:
        """Load a local file and wait until it has loaded."""
        self.events.clear()
        self.call("Page.navigate", {"url": path.resolve().as_uri()})
        self.wait_for_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """Run JavaScript in the page and return its (JSON) value; a thrown error is raised here."""
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in r:
            raise BrowserError(f"{expression!r} threw: {r['exceptionDetails']}")
        return r["result"].get("value")

    def hover(self, selector: str, dx: float = 0.5, dy: float = 0.5, index: int = 0) -> None:
        """Scroll the ``index``-th element matching ``selector`` into view and move the mouse
        onto it (``dx``, ``dy``: where inside its box, as fractions)."""
        box = self.evaluate(f"""(() => {{
            const e = document.querySelectorAll({json.dumps(selector)})[{index}];
            if (!e) return null;
            e.scrollIntoView({{block: "center", inline: "center"}});
            const r = e.getBoundingClientRect();
            return [r.left, r.top, r.width, r.height];
        }})()""")
        if box is None:
            raise BrowserError(f"nothing matches {selector!r}")
        x, y = box[0] + box[2] * dx, box[1] + box[3] * dy
        self.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})

    def click(self, selector: str) -> None:
        self.hover(selector)
        for kind in ("mousePressed", "mouseReleased"):
            x, y = self.evaluate(f"""(() => {{ const r = document.querySelector({json.dumps(selector)})
                .getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; }})()""")
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (not only the window)."""
        self.evaluate("window.scrollTo(0, 0)")
        w, h = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                     "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def _drain(self) -> None:
        """Read the events the browser has sent without being asked (errors, requests)."""
        import websocket

        self.evaluate("0")  # a round trip: what the page did before it has been reported
        self._ws.settimeout(0.3)
        try:
            while True:
                e = json.loads(self._ws.recv())
                if "method" in e:
                    self.events.append(e)
        except websocket.WebSocketTimeoutException:
            pass
        finally:
            self._ws.settimeout(COMMAND_TIMEOUT)

    def errors(self) -> list[str]:
        """JavaScript exceptions and console errors seen so far."""
        self._drain()
        out = [json.dumps(e["params"]["exceptionDetails"]) for e in self.events if e["method"] == "Runtime.exceptionThrown"]
        out += [json.dumps(e["params"]["args"]) for e in self.events
                if e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error"]
        return out

    def requests(self) -> list[str]:
        """Every URL the page asked for since it was opened."""
        self._drain()
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def close(self) -> None:
        ws = getattr(self, "_ws", None)
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
                self._proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._proc.wait(timeout=10)
