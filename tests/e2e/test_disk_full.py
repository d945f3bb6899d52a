"""A disk that fills during preprocess or train: one line naming the disk and its
free space, the previous output intact, nothing large left behind.

Each stage runs in a private mount namespace (`unshare`, as root or as a user
with user namespaces) on a small tmpfs; the namespace, and its tmpfs, end
with the script, so the script reports what was left on the disk first."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import NIH_SUBSET, PROJECT_ROOT, require_shared
from tests.data.test_hostile_images import manifest_of
from tests.e2e.project import copy_project, pipeline_env

pytestmark = pytest.mark.slow
NO_MOUNT = 97


def on_small_disk(project: Path, script: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `script` (sh) in `project` inside a new mount namespace; skip where none can be made."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) not found: cannot mount a small disk")
    done = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script], cwd=project,
                          env=pipeline_env(), capture_output=True, text=True, timeout=timeout)
    if done.returncode == NO_MOUNT or "unshare failed" in done.stderr:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace here: {done.stderr.strip()[:200]}")
    return done


def stage_report(project: Path) -> tuple[int, list[str], list[str]]:
    """The stage's exit status, its stderr lines, and the files over 1 MB it left on the full disk."""
    return (int((project / "stage.rc").read_text()), (project / "stage.err").read_text().splitlines(),
            (project / "big.txt").read_text().split())


def test_disk_full_during_preprocess(tmp_path):
    images = NIH_SUBSET / "images_001" / "images"
    require_shared(images, "real NIH subset images")
    project = tmp_path / "project"
    (project / "disk").mkdir(parents=True)
    names = [p.name for p in sorted(images.glob("*.png"))[:60]]
    manifest_of(images, names).to_csv(project / "manifest.csv", index=False)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["paths"].update({"validated_manifest": "manifest.csv", "tfrecords": "disk/tfrecords"})
    params["preprocess"].update({"image_size": 320, "workers": 2})  # 60 films of ~48 KB: more than the disk
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    done = on_small_disk(project, f"""
        mount -t tmpfs -o size=1m tmpfs disk || exit {NO_MOUNT}
        mkdir disk/tfrecords && echo '{{"previous": true}}' > disk/tfrecords/index.json
        PYTHONPATH={PROJECT_ROOT} python {PROJECT_ROOT}/src/preprocess.py 2> stage.err; echo $? > stage.rc
        find disk -type f -size +1M > big.txt; ls -a disk > listing.txt; cat disk/tfrecords/index.json > kept.txt
    """)
    assert done.returncode == 0, done.stderr
    returncode, stderr, big = stage_report(project)
    errors = [line for line in stderr if line.startswith("preprocess: error:")]
    assert returncode == 1 and len(errors) == 1, "\n".join(stderr[-30:])
    assert errors[0].startswith("preprocess: error: no space left on device"), errors[0]
    assert errors[0].startswith("preprocess: error: no space left on device writing disk/.tfrecords."), errors[0]
    assert f"0 bytes free on the disk holding {project / 'disk'}" in errors[0], errors[0]
    assert "Traceback" not in "\n".join(stderr)
    assert (project / "kept.txt").read_text().strip() == '{"previous": true}'  # the previous output intact
    assert (project / "listing.txt").read_text().split() == [".", "..", "tfrecords"]  # no staging left
    assert big == []


def test_disk_full_during_train(prepared_tiny, tmp_path):
    project = copy_project(prepared_tiny, tmp_path / "project")
    (project / "disk").mkdir()
    (project / "models").mkdir(exist_ok=True)
    # The tracking store and the model on a 64 MB disk that a filler fills once the first epoch is done.
    done = on_small_disk(project, f"""
        mount -t tmpfs -o size=64m tmpfs disk || exit {NO_MOUNT}
        mkdir disk/mlruns disk/models
        mount --bind disk/mlruns mlruns && mount --bind disk/models models || exit {NO_MOUNT}
        python src/train.py 2> stage.err &
        pid=$!
        while kill -0 $pid 2>/dev/null && ! grep -q "train: epoch 1/" stage.err; do sleep 0.1; done
        dd if=/dev/zero of=disk/filler bs=1M 2>/dev/null
        wait $pid; echo $? > stage.rc
        find disk -type f -size +1M ! -name filler > big.txt; ls -a disk/models > models.txt
    """)
    assert done.returncode == 0, done.stderr
    returncode, stderr, big = stage_report(project)
    assert any(line.startswith("train: epoch 1/") for line in stderr), "\n".join(stderr[-30:])
    errors = [line for line in stderr if line.startswith("train: error:")]
    assert returncode == 1 and len(errors) == 1, "\n".join(stderr[-30:])
    assert errors[0].startswith("train: error: no space left on device"), errors[0]
    assert f"0 bytes free on the disk holding {project / 'mlruns'}; " in errors[0], errors[0]
    assert "the best epoch (1 of 2) was not kept" in errors[0] and "models/model.keras is not written" in errors[0]
    assert "Traceback" not in "\n".join(stderr) and "sqlalchemy" not in "\n".join(stderr).lower()
    assert (project / "models.txt").read_text().split() == [".", ".."]  # no model, no kept checkpoint
    assert big == []
