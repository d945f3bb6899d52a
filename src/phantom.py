"""DVC stage phantom: the synthetic NIH-format data set, when ingest.source is phantom.

A stage of its own so that ingest can depend on ${ingest.root} whatever the
source: the phantom's folder is this stage's output, a user's download is
theirs (see dvc.yaml).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.stage import run_stage  # noqa: E402


def main() -> None:
    from pipeline.config import load_params, phantom_root
    from pipeline.phantom import write_phantom

    params = load_params()
    summary = write_phantom(params)
    print(f"phantom: {summary['images']} images in {phantom_root(params)}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("phantom", main)
