"""A stage script runs the `pipeline` package of its own checkout, not the one
the virtualenv's editable install points at: DVC runs queued experiments
(`dvc exp run --queue`) in temporary copies of the repo, and each must run the
code it was queued with. src/pipeline, a relative link to ../pipeline, puts the
script's own checkout first on its import path."""
from __future__ import annotations

import os

from tests.conftest import PROJECT_ROOT
from tests.e2e.project import TINY, make_project, run

MARKER = "stage code from the copied checkout"


def test_src_pipeline_is_a_relative_link_to_the_package():
    link = PROJECT_ROOT / "src" / "pipeline"
    assert link.is_symlink() and os.readlink(link) == "../pipeline"
    assert link.resolve() == (PROJECT_ROOT / "pipeline").resolve()


def test_a_copied_checkout_runs_its_own_pipeline_code(tmp_path):
    project = make_project(tmp_path / "copy", {**TINY, "ingest.phantom.n_images": 20})
    assert (project / "src" / "pipeline").is_symlink()
    stage_module = project / "pipeline" / "core" / "stage.py"
    stage_module.write_text(stage_module.read_text() + f"\nprint({MARKER!r}, file=sys.stderr)\n")
    result = run(["python", "src/phantom.py"], project)  # the first stage: writes the synthetic data set
    assert MARKER in result.stderr, result.stderr[-2000:]
    assert (project / "data" / "ingest" / "phantom" / "Data_Entry_2017.csv").is_file()
