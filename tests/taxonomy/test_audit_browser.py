"""The audit page opens in headless Chromium and every plotly plot renders without errors.

The page traps script errors and rejected promises on <html data-tol-errors> and counts
rendered plots on <html data-tol-plots>; Chromium's --dump-dom gives the DOM after load.
Skips only when Chromium is absent and TOL_REQUIRE_BROWSER is unset (CI sets it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_audit import make_resolved_workspace

from treeoflife.taxonomy.audit import audit_workspace
from treeoflife.taxonomy.audit_html import audit_figures
from treeoflife.workspace import Workspace

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def chromium() -> str:
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found:
        return found
    if os.environ.get("TOL_REQUIRE_BROWSER"):
        pytest.fail(
            "TOL_REQUIRE_BROWSER is set but no Chromium is installed (apt-get install chromium)"
        )
    pytest.skip(
        "Chromium not installed (apt-get install chromium); set TOL_REQUIRE_BROWSER to fail"
    )


def dump_dom(chromium: str, page: Path, profile: Path) -> tuple[str, str]:
    """Load `page` headless, let scripts and timers run, return (DOM, Chromium's stderr)."""
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def page_state(dom: str) -> tuple[int | None, int, str]:
    """(plots rendered, errors trapped, the error text) from the dumped DOM."""
    html_tag = re.search(r"<html[^>]*>", dom)
    assert html_tag, dom[:500]
    plots = re.search(r'data-tol-plots="(\d+)"', html_tag.group(0))
    errors = re.search(r'data-tol-errors="(\d+)"', html_tag.group(0))
    box = re.search(r'<pre id="tol-errors"[^>]*>(.*?)</pre>', dom, re.S)
    return (
        int(plots.group(1)) if plots else None,
        int(errors.group(1)) if errors else 0,
        box.group(1) if box else "",
    )


@pytest.fixture(scope="module")
def audit_page(pulled_workspace, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("audit-browser")
    workspace = make_resolved_workspace(pulled_workspace, root / "ws")
    report = audit_workspace(workspace, pulled_workspace.root, reports_dir=root / "reports")
    return report.html_path, report.figures


def test_audit_page_renders_every_plot_without_errors(chromium, audit_page, tmp_path):
    page, figures = audit_page
    dom, stderr = dump_dom(chromium, page, tmp_path / "profile")
    plots, errors, error_text = page_state(dom)
    expected = len(audit_figures(figures))
    assert errors == 0, error_text
    assert plots == expected, f"{plots} of {expected} plots rendered: {error_text}"
    drawn = re.findall(r'<div class="[^"]*\bsvg-container\b[^"]*"', dom)
    assert len(drawn) == expected  # plotly drew each one
    assert "Uncaught" not in stderr, stderr[-2000:]
    assert "Ursus arctus" in dom and "Comparison" in dom


def test_a_throwing_plot_fails_the_check(chromium, audit_page, tmp_path):
    """Negative control: when plotly throws, the trap reports it (so the test above can fail)."""
    page, figures = audit_page
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("id='plot-status'", "id='plot-renamed'"))
    dom, _ = dump_dom(chromium, broken, tmp_path / "profile")
    plots, errors, error_text = page_state(dom)
    assert errors >= 1 and "plot-status" in error_text
    assert plots == len(audit_figures(figures)) - 1


def test_unresolved_and_empty_workspaces_render(chromium, pulled_workspace, tmp_path):
    """Source-basis figures (nothing resolved) and an empty catalog draw without errors."""
    empty = Workspace(tmp_path / "empty").init()
    for name, workspace in (("source", pulled_workspace), ("empty", empty)):
        report = audit_workspace(workspace, reports_dir=tmp_path / name)
        dom, _ = dump_dom(chromium, report.html_path, tmp_path / f"profile-{name}")
        plots, errors, error_text = page_state(dom)
        assert (plots, errors) == (len(audit_figures(report.figures)), 0), (name, error_text)
