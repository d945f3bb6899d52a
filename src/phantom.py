"""DVC stage phantom: the synthetic NIH-format data set, when ingest.source is phantom.

A stage of its own so that ingest can depend on ${ingest.root} whatever the
source: the phantom's folder is this stage's output, a user's download is
theirs (see dvc.yaml). With any other source it writes only a note there.
"""
import sys

from pipeline.core.stage import run_stage


def main() -> None:
    from pipeline.core.config import load_params, phantom_root, section, worker_count
    from pipeline.phantom.generate import write_phantom

    params = load_params()
    ingest = section(params, "ingest")
    out_dir = phantom_root(params)
    summary = write_phantom(
        out_dir, source=ingest["source"], n_images=int(ingest["phantom"]["n_images"]),
        seed=int(params["seed"]), image_size=int(ingest["phantom"]["image_size"]),
        workers=worker_count(ingest.get("workers")),
        subgroup_gap=float(ingest["phantom"].get("subgroup_gap", 0.0)),
    )
    if ingest["source"] == "phantom":
        print(f"phantom: {summary['images']} images of {summary['patients']} patients, "
              f"{summary['boxes']} boxes in {out_dir}", file=sys.stderr)
    else:
        print(f"phantom: ingest.source is {ingest['source']}, wrote only a note in {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("phantom", main)
