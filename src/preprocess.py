"""DVC stage preprocess: validated manifest + images -> TFRecord shards per split."""
import sys

from pipeline.core.settings import Settings
from pipeline.core.stage import run_stage


def main(settings: Settings) -> None:
    from pipeline.model.backbones import check_backbone_settings

    # before TensorFlow loads: an image size the backbone cannot take stops the stage at once
    check_backbone_settings(settings.train.backbone, settings.preprocess.image_size, settings.train.weights)
    from pipeline.core.atomic import atomic_dir, write_csv_atomic, write_json_atomic
    from pipeline.core.config import worker_count
    from pipeline.core.figures import write_stage_figures
    from pipeline.data.manifest import read_manifest
    from pipeline.records.preprocess import write_tfrecord_shards
    from pipeline.records.tfrecords import INDEX_FILE

    preprocess = settings.preprocess
    manifest = read_manifest(settings.path("validated_manifest"))
    with atomic_dir(settings.path("tfrecords")) as staging:
        index, quarantine = write_tfrecord_shards(
            manifest, staging, image_size=preprocess.image_size, fit=preprocess.fit, encoding=preprocess.encoding,
            jpeg_quality=preprocess.jpeg_quality, shard_size=preprocess.shard_size,
            workers=worker_count(preprocess.workers), min_side=preprocess.min_side,
            max_aspect=float(preprocess.max_aspect),
        )
        write_json_atomic(staging / INDEX_FILE, index)
    write_csv_atomic(quarantine, settings.path("reports") / "quarantine.csv")
    write_stage_figures(
        {"quarantined": len(quarantine)},
        {"records": {s: v["records"] for s, v in index["splits"].items()}, "quarantined": len(quarantine),
         "shards": len(index["shards"])},
        settings.path("metrics") / "preprocess.json", settings.path("preprocess_report"),
    )
    for row in quarantine.itertuples():
        print(f"preprocess: quarantined {row.path}: {row.reason}", file=sys.stderr)
    print(f"preprocess: {sum(v['records'] for v in index['splits'].values())} records in "
          f"{len(index['shards'])} shards, {len(quarantine)} quarantined", file=sys.stderr)


if __name__ == "__main__":
    run_stage("preprocess", main)
