"""Open an HTML page in headless Chromium: every image must load; screenshot it.

Usage: ``python tools/browser_check.py out/index.html [--screenshot out/x.png]``

A copy of the page with a small script added is loaded with ``--dump-dom``;
after the load event the script writes, into the DOM, how many images the page
has, which of them failed to load (``naturalWidth == 0``) and the page height.
A second run takes a screenshot of the whole page (default: next to the page,
``<page>.png``). Exits 1 when an image is broken or the page has none.
Needs the ``chromium`` binary (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = """
<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0));
  const report = document.createElement('pre');
  report.id = 'browser-check';
  report.textContent = JSON.stringify({
    images: images.length,
    broken: broken.map(i => i.getAttribute('src')),
    height: document.documentElement.scrollHeight,
  });
  document.body.appendChild(report);
});
</script>
"""
# how every headless run of Debian's chromium starts here (the browser tests too):
# as root, with no GPU, and never reaching for the network on its own
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
FLAGS = [*HEADLESS_FLAGS, "--hide-scrollbars", "--virtual-time-budget=15000"]
WIDTH = 1280


def open_browser(profile, size: str = "1400,900", javascript: bool = True):
    """A selenium-driven headless Chromium (``HEADLESS_FLAGS``) for page tests."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        raise RuntimeError(
            "needs Debian's chromium and chromium-driver (make setup installs "
            "them: apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*HEADLESS_FLAGS, f"--window-size={size}"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def chromium(args: list[str], profile: str) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        sys.exit("chromium is not installed; on Debian: apt-get install chromium")
    proc = subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if proc.returncode:
        sys.exit(f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def probe(page: Path, profile: str) -> dict:
    """Load a probed copy of ``page`` (same folder, so relative links work)."""
    text = page.read_text(encoding="utf-8")
    with tempfile.NamedTemporaryFile(
        "w", suffix=".html", dir=page.parent, delete=False, encoding="utf-8"
    ) as copy:
        copy.write(text.replace("</body>", PROBE + "</body>"))
    try:
        dom = chromium(
            [f"--window-size={WIDTH},900", "--dump-dom", Path(copy.name).as_uri()],
            profile,
        )
    finally:
        Path(copy.name).unlink()
    found = re.search(r"<pre id=\"browser-check\">(.*?)</pre>", dom, re.S)
    if found is None:
        sys.exit("the page did not finish loading in headless chromium")
    return json.loads(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args()
    page = args.page.resolve()
    shot = (args.screenshot or page.with_suffix(".png")).resolve()
    with tempfile.TemporaryDirectory() as profile:
        report = probe(page, profile)
        height = min(max(report["height"], 600), 16000)
        chromium(
            [
                f"--screenshot={shot}",
                f"--window-size={WIDTH},{height}",
                page.as_uri(),
            ],
            profile,
        )
    print(
        f"{page.name}: {report['images']} images, {len(report['broken'])} broken; "
        f"screenshot {shot} ({WIDTH}x{height})"
    )
    for src in report["broken"]:
        print("  broken:", src)
    return 1 if report["broken"] or not report["images"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
