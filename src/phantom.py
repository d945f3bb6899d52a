"""DVC stage phantom: the synthetic NIH-format data set, when ingest.source is phantom.

A stage of its own so that ingest can depend on ${ingest.root} whatever the
source: the phantom's folder is this stage's output, a user's download is
theirs (see dvc.yaml). With any other source it writes only a note there.
"""
import sys

from pipeline.core.settings import Settings
from pipeline.core.stage import run_stage


def main(settings: Settings) -> None:
    from pipeline.data.sources import check_source_settings

    source = check_source_settings(settings.ingest.source, settings.ingest.root, settings.path("phantom"))
    from pipeline.core.config import worker_count
    from pipeline.phantom.generate import SecondSite, Shortcut, write_phantom
    from pipeline.phantom.render import SiteLook

    ingest, out_dir = settings.ingest, settings.path("phantom")
    site = ingest.phantom.second_site
    second_site = SecondSite(float(site.share), SiteLook(float(site.exposure), float(site.noise),
                                                         float(site.collimation), site.marker))
    drain = ingest.phantom.shortcut
    shortcut = Shortcut(drain.finding, float(drain.share_with), float(drain.share_without))
    summary = write_phantom(
        out_dir, source=ingest.source, n_images=ingest.phantom.n_images, seed=settings.seed,
        image_size=ingest.phantom.image_size, workers=worker_count(ingest.workers),
        subgroup_gap=float(ingest.phantom.subgroup_gap), second_site=second_site, shortcut=shortcut,
    )
    if source.root_is_phantom_output:
        second = f", {summary['second_site']} rendered as the second site" if summary["second_site"] else ""
        second += f", {summary['drains']} with a drain" if summary["drains"] else ""
        print(f"phantom: {summary['images']} images of {summary['patients']} patients, "
              f"{summary['boxes']} boxes{second} in {out_dir}", file=sys.stderr)
    else:
        print(f"phantom: ingest.source is {ingest.source}, wrote only a note in {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("phantom", main)
