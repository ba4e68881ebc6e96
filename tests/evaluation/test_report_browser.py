"""report.html in a real browser: headless Chromium (scripts/check_report_in_browser.py) opens it
with no console error, no failed load, no request outside the file, and every figure decoded. The
checker itself fails on a page with a broken image and a console error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_report_in_browser.py"


def _chromium() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from check_report_in_browser import find_chromium
    finally:
        sys.path.pop(0)
    if find_chromium() is None:
        pytest.skip("no Chromium here (apt-get install chromium): the report is not opened in a browser")


def _check(page: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(page), *extra], capture_output=True, text=True, timeout=180)


def test_the_report_opens_cleanly_in_headless_chromium(cascade_run, tmp_path):
    _chromium()
    shot = tmp_path / "report.png"
    result = _check(cascade_run / "report.html", "--screenshot", str(shot), "--min-images", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 image(s)" in result.stdout and "OK" in result.stdout
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_checker_fails_on_a_broken_image_a_console_error_and_an_outside_request(tmp_path):
    _chromium()
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><title>bad</title></head><body>'
                    '<img src="missing.png" alt="missing figure"><img src="data:image/svg+xml;base64,bm90IGFuIHN2Zw==" '
                    'alt="undecodable figure"><script>console.error("boom")</script>'
                    '<img src="http://192.0.2.1/x.png" alt="remote figure"></body></html>')
    result = _check(page)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "console error: boom" in result.stdout
    assert "image did not load: missing figure" in result.stdout
    assert "image did not load: undecodable figure" in result.stdout
    assert "request outside the file: http://192.0.2.1/x.png" in result.stdout
