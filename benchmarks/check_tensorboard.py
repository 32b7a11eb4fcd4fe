"""Check TensorBoard the way a user sees it: serve a run's events with ``tensorboard``, open the
page in headless Chromium and confirm that every scalar the run logged is drawn as a chart and
every image (ranked lists, label corrections) is shown, loaded.

    python benchmarks/check_tensorboard.py res/<run> [--screenshot tb.png]

Needs Chromium and its WebDriver (Debian: ``apt-get install chromium chromium-driver``), which
CI does not have, so this is a script rather than a test. It talks WebDriver's HTTP protocol
itself (no extra Python package), starts TensorBoard, chromedriver and Chromium (as root:
--no-sandbox; a fresh profile; no network beyond localhost) and stops them at the end. Exit
status 0: everything shown; 1: something missing (listed).
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core_reid.utils import ArgumentParser, UserError, run_cli  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1600,3000"]
# What the page shows of each expected tag: a chart drawn in a scalar card, a loaded picture
# in an image card (title attribute = the tag).
CARDS_SHOWN = """
const shown = {};
for (const card of document.querySelectorAll('card-view')) {
  const title = card.querySelector('tb-truncated-path[title]');
  if (!title) continue;
  const chart = card.querySelector('line-chart svg, line-chart canvas');
  const images = Array.from(card.querySelectorAll('img'));
  shown[title.getAttribute('title')] = {
    chart: chart !== null,
    image: images.some(i => i.complete && i.naturalWidth > 0)};
}
return shown;
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float) -> None:
    """Until ``url`` answers (a server has started), or UserError."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except (urllib.error.URLError, ConnectionError):
            if time.time() > deadline:
                raise UserError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.5)


@contextmanager
def process(command: list[str], ready_url: str, timeout: float) -> Iterator[None]:
    """Run ``command`` while the block runs (stopped afterwards, by its own handle)."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(ready_url, timeout)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class Browser:
    """A headless Chromium session driven over WebDriver's HTTP protocol."""

    def __init__(self, driver_url: str, chromium: str, profile: str):
        self.driver_url = driver_url
        options = {"binary": chromium, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]}
        self.session = self.call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": options}}})["sessionId"]

    def call(self, method: str, path: str, body: Optional[dict] = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.driver_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["value"]

    def open(self, url: str) -> None:
        self.call("POST", f"/session/{self.session}/url", {"url": url})

    def run(self, script: str) -> Any:
        return self.call("POST", f"/session/{self.session}/execute/sync",
                         {"script": script, "args": []})

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("GET", f"/session/{self.session}/screenshot")))

    def close(self) -> None:
        self.call("DELETE", f"/session/{self.session}")


def logged_tags(run_dir: Path) -> tuple[list[str], list[str]]:
    """(scalar tags, image tags) in the run's event files, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 1})
    events.Reload()
    return sorted(events.Tags()["scalars"]), sorted(events.Tags()["images"])


def check_group(browser: Browser, board: str, prefix: str, scalars: list[str],
                images: list[str], timeout: float) -> dict[str, bool]:
    """Open the time-series page filtered to one group of tags; whether each is shown."""
    pattern = f"^{re.escape(prefix)}(/|$)"
    browser.open(f"{board}/?tagFilter={urllib.parse.quote(pattern)}#timeseries")
    deadline, shown = time.time() + timeout, {}
    while True:
        cards = browser.run(CARDS_SHOWN)
        shown = {tag: cards.get(tag, {}).get("chart", False) for tag in scalars}
        shown.update({tag: cards.get(tag, {}).get("image", False) for tag in images})
        if all(shown.values()) or time.time() > deadline:
            return shown
        time.sleep(1)


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder (holding tensorboard/)")
    parser.add_argument("--chromium", default="chromium", help="the Chromium binary")
    parser.add_argument("--chromedriver", default="chromedriver", help="its WebDriver")
    parser.add_argument("--screenshot", default=None, help="save the page of the test/ group "
                        "(scores and ranked lists) as this PNG")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for a page")
    cli = parser.parse_args()
    run_dir = Path(cli.run_dir)
    if not (run_dir / "tensorboard").is_dir():
        raise UserError(f"{run_dir}: no tensorboard/ folder; give a run folder")
    for tool in (cli.chromium, cli.chromedriver):
        if shutil.which(tool) is None:
            raise UserError(f"{tool} not found; install it (Debian: apt-get install chromium "
                            "chromium-driver) or pass --chromium/--chromedriver")
    scalars, images = logged_tags(run_dir)
    for needed in ("test/rank1", "test/mAP", "net1/label_precision"):
        if needed not in scalars:
            raise UserError(f"{run_dir}: the events hold no {needed} scalar; is it a run folder?")
    groups = sorted({tag.split("/")[0] for tag in scalars + images})
    board_port, driver_port = free_port(), free_port()
    board, driver = f"http://127.0.0.1:{board_port}", f"http://127.0.0.1:{driver_port}"
    results = {}
    with ExitStack() as stack:
        stack.enter_context(process([sys.executable, "-m", "tensorboard.main", "--logdir",
                                     str(run_dir), "--host", "127.0.0.1", "--port",
                                     str(board_port)], board + "/data/logdir", cli.timeout))
        stack.enter_context(process([shutil.which(cli.chromedriver), f"--port={driver_port}"],
                                    driver + "/status", cli.timeout))
        profile = stack.enter_context(tempfile.TemporaryDirectory(prefix="chromium-profile-"))
        browser = Browser(driver, shutil.which(cli.chromium), profile)
        stack.callback(browser.close)
        for group in groups:
            in_group = lambda tags: [t for t in tags if t.split("/")[0] == group]  # noqa: E731
            results.update(check_group(browser, board, group, in_group(scalars),
                                       in_group(images), cli.timeout))
            if group == "test" and cli.screenshot:
                browser.screenshot(Path(cli.screenshot))
    missing = [tag for tag, ok in results.items() if not ok]
    print(f"{board} ({run_dir}): {len(scalars)} scalar tags drawn as charts and {len(images)} "
          f"image tags shown: {len(results) - len(missing)} of {len(results)}")
    for tag in scalars + images:
        print(f"  {'ok  ' if results[tag] else 'MISSING'} {tag}")
    if missing:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
