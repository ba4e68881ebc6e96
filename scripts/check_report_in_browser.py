"""Open an HTML report in headless Chromium and check it as a reader's browser would show it.

    python scripts/check_report_in_browser.py RUN_DIR/report.html [--screenshot out.png] [--height 1800]

Fails (exit 1, one line per problem) on a console error or warning, an uncaught script error, a
failed load, an image that did not decode (or no image at all), or any request that leaves the
file (a report must open offline: no CDN, fonts or scripts from elsewhere). Exit 2: no Chromium,
or no such file. With --screenshot, writes a PNG of the page (the whole page, or its top --height
pixels) at 1280 pixels wide.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages,
each ended by a NUL byte, Chromium reading fd 3 and writing fd 4), so nothing beyond the Debian
`chromium` package (apt-get install chromium) and the standard library is needed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIDTH = 1280
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if shutil.which(explicit) or Path(explicit).is_file() else None
    return next((shutil.which(name) for name in CANDIDATES if shutil.which(name)), None)


def _pipe_fds(read_end: int, write_end: int) -> None:
    """In the child: Chromium's pipe ends at fds 3 (commands) and 4 (replies). Copied to free fds
    first, as either end may itself be 3 or 4."""
    read_copy, write_copy = os.dup(read_end), os.dup(write_end)
    os.dup2(read_copy, 3)
    os.dup2(write_copy, 4)


class DevTools:
    """A minimal DevTools client over Chromium's pipe: send commands, collect events."""

    def __init__(self, binary: str, profile: str):
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--mute-audio", f"--user-data-dir={profile}", "--remote-debugging-pipe",
             f"--window-size={WIDTH},1000", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=lambda: _pipe_fds(to_chrome_r, from_chrome_w),
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buffer, self.events, self.next_id = b"", [], 0

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            event = self._read_message(deadline)
            if event.get("method") == method:
                return event
            self.events.append(event)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self.to_chrome)
        os.close(self.from_chrome)


def _event_problems(events: list[dict], page_url: str) -> list[str]:
    problems = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            problems.append(f"console {params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            problems.append(f"uncaught error: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
            entry = params["entry"]
            problems.append(f"browser {entry['level']} ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if url != page_url and not url.startswith(("data:", "about:", "blob:")):
                problems.append(f"request outside the file: {url[:120]}")
        elif method == "Network.loadingFailed":
            problems.append(f"failed to load: {params.get('errorText')}")
    return problems


def check_report(path: Path, *, screenshot: Path | None = None, height: int | None = None,
                 chromium: str | None = None, min_images: int = 1) -> dict:
    """Open `path` in headless Chromium; returns {problems: [...], images: n, title, height}."""
    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium, or set CHROMIUM=/path/to/chrome)")
    url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="cascade-kd-chromium-") as profile:
        tools = DevTools(binary, profile)
        try:
            target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                tools.send(f"{domain}.enable", session=session)
            tools.send("Emulation.setDeviceMetricsOverride",
                       {"width": WIDTH, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, session=session)
            tools.events.clear()
            tools.send("Page.navigate", {"url": url}, session=session)
            tools.wait_for("Page.loadEventFired", timeout=60)
            state = tools.send("Runtime.evaluate", {"returnByValue": True, "awaitPromise": True, "expression": """
                (async () => {
                  const images = [...document.images];
                  await Promise.all(images.map(i => i.decode().catch(() => null)));
                  return {images: images.length, title: document.title,
                          broken: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt || i.src.slice(0, 80)),
                          height: Math.ceil(document.documentElement.scrollHeight)};
                })()"""}, session=session)["result"]["value"]
            time.sleep(0.3)  # late console messages
            tools.send("Runtime.evaluate", {"expression": "0"}, session=session)  # drains pending events
            problems = _event_problems(tools.events, url)
            problems += [f"image did not load: {name}" for name in state["broken"]]
            if state["images"] < min_images:
                problems.append(f"{state['images']} image(s) on the page, expected at least {min_images}")
            if screenshot is not None:
                shot_height = min(state["height"], height) if height else state["height"]
                tools.send("Emulation.setDeviceMetricsOverride",
                           {"width": WIDTH, "height": shot_height, "deviceScaleFactor": 1, "mobile": False}, session=session)
                data = tools.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                             "clip": {"x": 0, "y": 0, "width": WIDTH,
                                                                      "height": shot_height, "scale": 1}},
                                  session=session, timeout=60)["data"]
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                Path(screenshot).write_bytes(base64.b64decode(data))
        finally:
            tools.close()
    return {"problems": problems, "images": state["images"], "title": state["title"], "height": state["height"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--screenshot", type=Path, help="write a PNG of the page here")
    parser.add_argument("--height", type=int, help="screenshot only the top HEIGHT pixels (default: the whole page)")
    parser.add_argument("--min-images", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"error: {args.report}: no such file", file=sys.stderr)
        return 2
    try:
        result = check_report(args.report, screenshot=args.screenshot, height=args.height, min_images=args.min_images)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for problem in result["problems"]:
        print(f"PROBLEM: {problem}")
    print(f"{args.report}: {result['images']} image(s), page {result['height']} px high, title {result['title']!r}: "
          + ("OK" if not result["problems"] else f"{len(result['problems'])} problem(s)"))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
