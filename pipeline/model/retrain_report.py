"""What `make retrain` tells the team, as the retrain workflow's pull-request
body: what changed in the data (the ingest stage's data_change, in the words
pipeline.data.data_change.change_lines gives it), whether the films added
look like the current champion's test films (pipeline.monitor, run before
the new model can replace that champion), and the champion decision with
its paired CI (the evaluate stage's registry record)."""
from __future__ import annotations

from pathlib import Path

from pipeline.core.labels import FINDINGS
from pipeline.data.data_change import change_lines
from pipeline.data.sources import SYNTHETIC_WARNING, is_synthetic

NAMED_IMAGES = 20  # added images named in the body; the rest are counted


def added_ids(change: dict) -> list[str]:
    return [image for ids in (change.get("added") or {}).values() for image in ids]


def monitor_added_films(change: dict, manifest_file: Path, model_uri: str, out_dir: Path) -> dict:
    """The added films (their manifest rows: path, age, sex, view, patient)
    tested against `model_uri`'s reference profile; monitor.json and its page
    go to out_dir. {"skipped": why} when there is nothing or no one to compare with."""
    from pipeline.data.manifest import read_manifest
    from pipeline.monitor.monitor import MonitorError, monitor_films, write_monitor_report
    from pipeline.serve.api import ModelLoadError, load_model

    added = added_ids(change)
    if not added:
        return {"skipped": "no images added"}
    try:
        model = load_model(model_uri)
    except ModelLoadError as exc:
        return {"skipped": f"no champion to compare with ({exc})"}
    if model.reference is None:
        return {"skipped": f"{model.identity()} has no reference profile (registered before `cxr monitor`)"}
    rows = read_manifest(manifest_file).set_index("image_id").loc[added]

    def patient_of(i: int, _header) -> dict:  # a missing age or an unknown sex or view: as profile_films reads them
        row = rows.iloc[i]
        return {"age": row["age"], "sex": row["sex"], "view": row["view"], "patient_id": str(row["patient_id"])}

    try:
        report = monitor_films(model, model.reference, list(rows["path"]), patient_of, permutations=1000,
                               alpha=0.05, seed=0)
    except MonitorError as exc:
        return {"skipped": str(exc)}
    write_monitor_report(report, out_dir)
    return report


def _data_section(change: dict, source: str | None) -> list[str]:
    lines = ["## What changed in the data", ""]
    if is_synthetic(source):
        lines += [f"_The data is a {SYNTHETIC_WARNING}._", ""]
    lines += [f"- {line}" for line in change_lines(change)]
    if change.get("compared_with") is None:
        return lines
    lines += ["", "| split | images added | images removed | patients added | patients removed |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {split} | {c['images_added']} | {c['images_removed']} | {c['patients_added']} | "
              f"{c['patients_removed']} |" for split, c in change["splits"].items()]
    before, after = change["before"], change["after"]
    lines += ["", "| | before | after |", "|---|---:|---:|",
              f"| images | {before['images']} | {after['images']} |",
              f"| patients | {before['patients']} | {after['patients']} |"]
    for key, label in (("female_share", "women"), ("ap_share", "AP films")):
        lines.append(f"| {label} | {_share(before[key])} | {_share(after[key])} |")
    lines.append(f"| median age | {before['median_age']} | {after['median_age']} |")
    lines += [f"| {f} prevalence | {_share(before['prevalence'][f])} | {_share(after['prevalence'][f])} |"
              for f in FINDINGS]
    added = added_ids(change)
    if added:
        named = ", ".join(f"`{image}`" for image in added[:NAMED_IMAGES])
        more = f" and {len(added) - NAMED_IMAGES} more" if len(added) > NAMED_IMAGES else ""
        lines += ["", f"Added images: {named}{more}."]
    return lines


def _share(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _monitor_section(monitor: dict, page: Path) -> list[str]:
    from pipeline.monitor.monitor import verdict_line

    lines = ["", "## Do the added films look like the champion's test films?", ""]
    if "skipped" in monitor:
        return lines + [f"Not checked: {monitor['skipped']}."]
    model = monitor["model"]
    lines += [f"**{verdict_line(monitor)}** (against {model['uri']} = version {model['version']}, "
              f"checked before the new model was registered; `cxr monitor`, page: `{page}`)."]
    shifted = [f"{f} {s['difference']:+.3f} [{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}]"
               for f, s in monitor["probability_shift"].items() if s["ci"][0] > 0 or s["ci"][1] < 0]
    if shifted:
        lines.append(f"Mean probability moved (95% CI excludes 0): {', '.join(shifted)}.")
    return lines


def _decision_section(evaluation: dict | None) -> list[str]:
    lines = ["", "## The champion decision", ""]
    if evaluation is None:
        return lines + ["The evaluate stage did not run: no new model was registered."]
    registry, name = evaluation["registry"], evaluation["registered_model"]["name"]
    role = "the new **champion**" if registry["champion"] else "a **challenger** (the champion is unchanged)"
    lines.append(f"{name} version {registry['version']} registered as {role}: {'; '.join(registry['reasons'])}.")
    comparison = registry.get("comparison")
    if comparison:
        low, high = comparison["mean_auc_diff_ci"]
        lines.append(f"Against champion version {comparison['champion_version']} on the same "
                     f"{comparison['test_images']} test images of {comparison['test_patients']} patients: mean AUC "
                     f"difference {comparison['mean_auc_diff']:+.4f}, paired 95% CI [{low:+.4f}, {high:+.4f}].")
    return lines


def pull_request_body(commit: str, change: dict | None, source: str | None, monitor: dict,
                      evaluation: dict | None, monitor_page: Path) -> str:
    """The markdown body (every figure from the reports named)."""
    lines = [f"`make retrain` on {commit}: new `dvc.lock` and metrics.", ""]
    lines += _data_section(change, source) if change else ["## What changed in the data", "",
                                                           "- the ingest stage did not run: the data is unchanged"]
    lines += _monitor_section(monitor, monitor_page)
    lines += _decision_section(evaluation)
    return "\n".join(lines) + "\n"
