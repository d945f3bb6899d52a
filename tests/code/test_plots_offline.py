"""`dvc plots show` / `dvc plots diff` pages render with no network: the repo's
HTML template (.dvc/config plots.html_template) inlines vega, vega-lite and
vega-embed instead of DVC's CDN <script src>s."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from configobj import ConfigObj

from pipeline.core.plots_page import TEMPLATE_NAME, build_template
from tests.conftest import PROJECT_ROOT

REPO_PLOTS_CONFIG = ConfigObj(str(PROJECT_ROOT / ".dvc" / "config")).get("plots", {})
CDN_HOSTS = ("jsdelivr", "unpkg.com", "cdnjs", "cdn.plot.ly", "esm.sh", "skypack")
# Headless Chromium with every connection refused or unresolved (each call
# adds a profile of its own: tests run two at a time, see the Makefile).
CHROMIUM_OFFLINE = ["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--proxy-server=127.0.0.1:9",
                    '--host-resolver-rules=MAP * ~NOTFOUND', "--virtual-time-budget=5000", "--dump-dom"]
no_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                 reason="no `chromium` binary on PATH (Debian package chromium)")

DVC_YAML = """\
plots:
  - roc.csv:
      x: fpr
      y: tpr
      template: simple
  - history.csv:
      x: epoch
"""
ROC = "fpr,tpr\n0.0,0.0\n0.1,0.6\n0.4,0.9\n1.0,1.0\n"
HISTORY = "epoch,loss\n0,0.9\n1,0.6\n2,0.5\n"


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    return result


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([str(Path(sys.executable).parent / "dvc"), *args], cwd)


def git(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]
    return run(["git", *identity, *args], cwd)


def offline_dom(page: Path, tmp_path: Path) -> str:
    """The page's DOM once headless Chromium, with the network blocked, has run its scripts."""
    result = subprocess.run([*CHROMIUM_OFFLINE, f"--user-data-dir={tmp_path / 'profile'}", page.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def script_sources(page: str) -> list[str]:
    return re.findall(r"<script\b[^>]*\bsrc\s*=\s*[\"']?([^\"'\s>]+)", page, flags=re.IGNORECASE)


@pytest.fixture(scope="module")
def template() -> str:
    return build_template()


def plots_repo(repo: Path, template: str) -> Path:
    """A git + DVC repo in `repo` with the project's plots setting and its offline template."""
    git("init", "-q", cwd=repo)
    dvc("init", "-q", cwd=repo)
    config = ConfigObj(str(repo / ".dvc" / "config"))
    config["plots"] = dict(REPO_PLOTS_CONFIG)
    config.write()
    (repo / ".dvc" / config["plots"]["html_template"]).write_text(template, encoding="utf-8")
    return repo


@pytest.fixture(scope="module")
def pages(tmp_path_factory, template) -> dict[str, Path]:
    """A git + DVC repo with the repo's plots setting and two plots; `dvc plots show`
    and `dvc plots diff HEAD` (one plot changed since the commit) run in it."""
    repo = plots_repo(tmp_path_factory.mktemp("plots"), template)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "roc.csv").write_text(ROC)
    (repo / "history.csv").write_text(HISTORY)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "plots", cwd=repo)
    (repo / "roc.csv").write_text(ROC.replace("0.6", "0.7"))
    dvc("plots", "show", "-o", "show", cwd=repo)
    dvc("plots", "diff", "HEAD", "-o", "diff", cwd=repo)
    return {kind: repo / kind / "index.html" for kind in ("show", "diff")}


def test_repo_uses_the_committed_template():
    """Committed, so that `dvc plots show` works in any clone, with or without
    `make` (DVC refuses a missing template: "HTML template has to contain '{plot_divs}'")."""
    assert REPO_PLOTS_CONFIG.get("html_template") == TEMPLATE_NAME
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", f".dvc/{TEMPLATE_NAME}"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True)
    assert tracked.returncode == 0, f".dvc/{TEMPLATE_NAME} is not tracked by git: {tracked.stderr}"
    assert f"/.dvc/{TEMPLATE_NAME}" not in (PROJECT_ROOT / ".gitignore").read_text().splitlines()


def test_template_inlines_the_libraries(template):
    assert "{plot_divs}" in template and "{scripts}" not in template  # {scripts}: DVC's CDN tags
    assert "window.vegaEmbed" in template and "vega-embed " in template
    assert script_sources(template) == [] and not any(host in template for host in CDN_HOSTS)


@pytest.mark.parametrize("kind", ["show", "diff"])
def test_page_references_no_cdn(pages, kind):
    page = pages[kind].read_text(encoding="utf-8")
    assert page.count("vegaEmbed('#") == 2
    assert not [src for src in script_sources(page) if re.match(r"(https?:)?//", src)], script_sources(page)
    assert not [host for host in CDN_HOSTS if host in page]


@no_chromium
@pytest.mark.parametrize("kind", ["show", "diff"])
def test_page_renders_offline_in_chromium(pages, kind, tmp_path):
    dom = offline_dom(pages[kind], tmp_path)
    assert len(re.findall(r'<svg\b[^>]*class="marks"', dom)) == 2, "vega-embed drew no chart"
    assert len(re.findall(r'class="mark-line role-mark[^>]*><path\b[^>]*\bd="M[\d.]', dom)) >= 2, "no line drawn"
    assert ">fpr<" in dom and ">epoch<" in dom  # axis titles
    if kind == "diff":
        assert ">HEAD<" in dom and ">workspace<" in dom  # legend: both revisions


@no_chromium
def test_cdn_page_is_blank_under_the_same_blocking(pages, tmp_path):
    # The control: DVC's own page (scripts from jsdelivr) draws nothing, so the
    # blocking above really is offline.
    from dvc_render.html import PAGE_HTML

    cdn_template = tmp_path / "cdn.html"
    cdn_template.write_text(PAGE_HTML)
    repo = pages["show"].parent.parent
    dvc("plots", "show", "--html-template", str(cdn_template), "-o", str(tmp_path / "cdn"), cwd=repo)
    page = tmp_path / "cdn" / "index.html"
    assert any("jsdelivr" in src for src in script_sources(page.read_text()))
    assert 'class="marks"' not in offline_dom(page, tmp_path)


def test_committed_template_is_current(template):
    # Generated from the pinned vl-convert-python; a pin change must regenerate it.
    committed = PROJECT_ROOT / ".dvc" / TEMPLATE_NAME
    assert committed.read_text(encoding="utf-8") == template, (
        f"{committed} is stale: run `python -m pipeline.core.plots_page` and commit it")


@pytest.fixture(scope="module")
def auc_pages(tmp_path_factory, template) -> dict[str, Path]:
    """The project's AUC chart (.dvc/plots/auc_ci.json) on evaluate's table: `dvc plots show` for a real and a
    synthetic source, and `dvc plots diff HEAD` against a commit whose table predates the data_warning column."""
    from pipeline.model.evaluate import auc_table

    repo = plots_repo(tmp_path_factory.mktemp("auc"), template)
    (repo / ".dvc" / "plots").mkdir()
    shutil.copy(PROJECT_ROOT / ".dvc" / "plots" / "auc_ci.json", repo / ".dvc" / "plots")
    (repo / "dvc.yaml").write_text("plots:\n  - auc.csv:\n      template: auc_ci\n      x: auc\n      y: finding\n")
    metrics = {"auc": {"Mass": 0.71, "Edema": 0.64}, "auc_ci_low": {"Mass": 0.6, "Edema": 0.5},
               "auc_ci_high": {"Mass": 0.8, "Edema": 0.75}}
    auc_table(metrics, "nih").drop(columns="data_warning").to_csv(repo / "auc.csv", index=False)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "an older run", cwd=repo)
    pages = {}
    for kind, source in (("real", "nih"), ("synthetic", "phantom")):
        auc_table(metrics, source).to_csv(repo / "auc.csv", index=False)
        dvc("plots", "show", "-o", kind, cwd=repo)
        pages[kind] = repo / kind / "index.html"
    dvc("plots", "diff", "HEAD", "-o", "diff", cwd=repo)
    pages["diff"] = repo / "diff" / "index.html"
    return pages


@no_chromium
@pytest.mark.parametrize("kind", ["real", "synthetic", "diff"])
def test_the_auc_chart_says_when_its_figures_are_synthetic(auc_pages, kind, tmp_path):
    dom = offline_dom(auc_pages[kind], tmp_path)
    assert len(re.findall(r'class="mark-rect role-mark[^>]*><path\b', dom)) == 1, "no bars drawn"
    assert ">Mass<" in dom and ">Edema<" in dom
    warning = "Synthetic phantom: these figures say nothing about clinical performance"
    # drawn once, above the bars, by the workspace's table (the older commit's has no warning to draw)
    assert dom.count(f">{warning}<") == (0 if kind == "real" else 1)
