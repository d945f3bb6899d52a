"""DVC stage preprocess: validated manifest + images -> TFRecord shards per split."""
import sys

from pipeline.core.stage import run_stage


def main() -> None:
    from pipeline.core.atomic import atomic_dir, write_csv_atomic, write_json_atomic
    from pipeline.core.config import load_params, path_of, section, worker_count
    from pipeline.core.figures import write_stage_figures
    from pipeline.data.manifest import read_manifest
    from pipeline.records.preprocess import write_tfrecord_shards
    from pipeline.records.tfrecords import INDEX_FILE

    params = load_params()
    settings = section(params, "preprocess")
    manifest = read_manifest(path_of(params, "validated_manifest"))
    with atomic_dir(path_of(params, "tfrecords")) as staging:
        index, quarantine = write_tfrecord_shards(
            manifest, staging,
            image_size=int(settings["image_size"]), fit=settings["fit"],
            encoding=settings["encoding"], jpeg_quality=int(settings["jpeg_quality"]),
            shard_size=int(settings["shard_size"]), workers=worker_count(settings["workers"]),
            min_side=int(settings["min_side"]), max_aspect=float(settings["max_aspect"]),
        )
        write_json_atomic(staging / INDEX_FILE, index)
    write_csv_atomic(quarantine, path_of(params, "reports") / "quarantine.csv")
    write_stage_figures(
        {"quarantined": len(quarantine)},
        {"records": {s: v["records"] for s, v in index["splits"].items()}, "quarantined": len(quarantine),
         "shards": len(index["shards"])},
        path_of(params, "metrics") / "preprocess.json", path_of(params, "preprocess_report"),
    )
    for row in quarantine.itertuples():
        print(f"preprocess: quarantined {row.path}: {row.reason}", file=sys.stderr)
    print(f"preprocess: {sum(v['records'] for v in index['splits'].values())} records in "
          f"{len(index['shards'])} shards, {len(quarantine)} quarantined", file=sys.stderr)


if __name__ == "__main__":
    run_stage("preprocess", main)
