"""Benchmark: does the drift monitor see a planted drift, in proportion, without crying wolf, and at what cost?

Drift (pipeline.monitor.trials): a small_cnn trained on the phantom
(tests/model/phantom_model.py, 600 films, 64 px input, ~2 min) is the model;
its reference is --reference-films first-site phantom films (1024 px, as
NIH's) of their own seed. Two more pools, each its own seed: --clean-films
first-site films the reference never saw, and --shifted-films rendered as
params.yaml's second site (exposure 1.3, noise 2.5, collimation 0.06, an "R"
marker). Batches of --batch films mix second-site films in at 0, 10, 25, 50
and 100%, one batch per share and seed over --seeds seeds; each is tested
against the reference with --permutations re-splits of the patients (and,
for the clean batches, also of the films, as if each film were its own
patient: what ignoring the patient costs).
Targets: Spearman's rho of drift score against share, per seed, averaged
>= 0.9; drift found in >= 80% of the 25% batches; clean batches (another
--null-batches of 0%) alarm in <= 5%.

Cost: what `cxr monitor` does per film against what `cxr predict` does, in
process, side by side for --rounds rounds on the same --cost-films real NIH
PNGs of ../shared, with a DenseNet121 at 320 px (random weights: they do not
change the cost): (a) the prediction pass: each film read, checked and
preprocessed (XrayModel.read), the model called batch by batch (the strongest
fair baseline; Keras's predict loop, which `cxr predict` uses, is shown
beside it and is slower); (b) the monitor:
profile_films (the same reading, grey statistics, one pass giving embedding
and probabilities) and the permutation tests against a reference of as many
films. Target: (b) <= 1.25 x (a) on the mean ("about one prediction pass").

    .venv/bin/python benchmarks/bench_drift_monitor.py [--seeds 10] [--null-batches 100] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from common import add_output_arguments, contention_line, describe, interleaved, nih_pngs, report, timed

from pipeline.core.labels import FINDINGS
from pipeline.monitor.profile import profile_films
from pipeline.monitor.reference import build_reference, compare
from pipeline.monitor.trials import run_trials, trial_summary
from pipeline.phantom.generate import SecondSite, generate_phantom
from pipeline.phantom.render import SiteLook
from pipeline.serve.monitor_command import patient_lookup

SECTION = "bench_drift_monitor"
SHARES = [0.0, 0.1, 0.25, 0.5, 1.0]
SECOND_SITE = SiteLook(exposure=1.3, noise=2.5, collimation=0.06, marker=True)  # params.yaml's second_site
SPEARMAN_TARGET, DETECTION_TARGET, FALSE_ALARM_TARGET, COST_TARGET = 0.9, 0.8, 0.05, 1.25
COST_SIZE = 320


def pool(root: Path, films: int, seed: int, shifted: bool):
    generate_phantom(root, films, seed, image_size=1024, workers=os.cpu_count() or 1, progress=False,
                     second_site=SecondSite(1.0, SECOND_SITE) if shifted else SecondSite())
    return sorted((root / "images").glob("*.png"))


def profiled(model, root: Path, films: list[Path]):
    profiles = profile_films(model, films, patient_lookup(root / "Data_Entry_2017.csv", films), batch_size=32)
    if profiles.failed:
        raise SystemExit(f"{SECTION}: films not profiled: {profiles.failed}")
    return profiles


def drift_lines(args, work: Path) -> list[str]:
    from tests.model.phantom_model import train_phantom_model

    model, _ = train_phantom_model(work / "train", seed=0)
    pools = {}
    for name, films, seed, shifted in (("reference", args.reference_films, 31, False),
                                       ("clean", args.clean_films, 32, False),
                                       ("second site", args.shifted_films, 33, True)):
        paths = pool(work / name.replace(" ", "_"), films, seed, shifted)
        pools[name] = profiled(model, work / name.replace(" ", "_"), paths)
    reference = build_reference(pools["reference"], list(FINDINGS), {"split": "test", "data_source": "phantom"})
    findings = list(FINDINGS)
    seeds = list(range(args.seeds))
    mixes = trial_summary(run_trials(reference, pools["clean"], pools["second site"], findings, SHARES, seeds,
                                     args.batch, args.permutations))
    null_seeds = list(range(1000, 1000 + args.null_batches))
    null = trial_summary(run_trials(reference, pools["clean"], pools["second site"], findings, [0.0], null_seeds,
                                    args.batch, args.permutations))
    by_film = trial_summary(run_trials(reference, pools["clean"], pools["second site"], findings, [0.0], null_seeds,
                                       args.batch, args.permutations, by_patient=False))["per_share"][0.0]
    patients = len(set(pools["reference"].patients))
    lines = [f"model: small_cnn trained on the phantom (64 px); reference: {args.reference_films} first-site films "
             f"of {patients} patients; pools: {args.clean_films} first-site, {args.shifted_films} second-site films "
             f"(1024 px); batches of {args.batch}; {args.permutations} permutations of patients; alpha 0.05",
             "share  batches  drift found  mean drift score"]
    for share, row in mixes["per_share"].items():
        lines.append(f"{share:>5.0%}  {row['batches']:>7}  {row['flagged']:>4} ({row['detection']:.0%})"
                     f"  {row['mean_score']:>10.2f}")
    rhos = mixes["spearman_by_seed"]
    clean = null["per_share"][0.0]
    lines += [
        f"Spearman rho (score vs share) per seed: {', '.join(f'{r:.2f}' for r in rhos)}; mean "
        f"{mixes['spearman_mean']:.3f} (target >= {SPEARMAN_TARGET}): "
        f"{'met' if mixes['spearman_mean'] >= SPEARMAN_TARGET else 'NOT met'}",
        f"drift found at 25%: {mixes['per_share'][0.25]['detection']:.0%} of {len(seeds)} batches (target >= "
        f"{DETECTION_TARGET:.0%}): {'met' if mixes['per_share'][0.25]['detection'] >= DETECTION_TARGET else 'NOT met'}",
        f"false alarms on clean batches: {clean['flagged']} of {clean['batches']} ({clean['detection']:.1%}; target "
        f"<= {FALSE_ALARM_TARGET:.0%}): {'met' if clean['detection'] <= FALSE_ALARM_TARGET else 'NOT met'}",
        f"the same clean batches re-split film by film (as if each film were its own patient): "
        f"{by_film['flagged']} of {by_film['batches']} false alarms ({by_film['detection']:.1%})",
    ]
    return lines


def cost_lines(args) -> list[str]:
    from pipeline.model.architectures import build_model
    from pipeline.serve.xray_model import XrayModel

    films = nih_pngs()
    if len(films) < 2 * args.cost_films:
        raise SystemExit(f"{SECTION}: needs {2 * args.cost_films} NIH PNGs of ../shared, found {len(films)}")
    new, reference_films = films[: args.cost_films], films[args.cost_films: 2 * args.cost_films]
    model = XrayModel(build_model("densenet121", COST_SIZE, "none"), {f: 0.5 for f in FINDINGS}, COST_SIZE)
    unknown = lambda i, header: None  # noqa: E731 - no metadata: the patient features are left untested
    reference = build_reference(profile_films(model, reference_films, unknown, 16), list(FINDINGS), {"split": "test"})

    def predict_pass():
        # the strongest fair baseline: the model called batch by batch, without
        # Keras's predict loop (which builds a dataset per call; what `cxr predict` uses)
        images = np.stack([model.read(path).pixels for path in new])
        for start in range(0, len(images), 16):
            model.recalibrate(np.asarray(model.keras_model.predict_on_batch(images[start:start + 16])))

    def keras_predict_pass():
        images = np.stack([model.read(path).pixels for path in new])
        model.predict(images, None, 16)

    def monitor_pass():
        profiles = profile_films(model, new, unknown, 16)
        return timed(compare, reference, profiles, list(FINDINGS), args.permutations, 0.05, 0)[1]

    predict_pass()  # warm-up: each variant's first call traces its graph
    keras_predict_pass()
    monitor_pass()
    contention: dict[str, list[float]] = {}
    timings = {"predict": [], "keras predict": [], "monitor": []}
    tests = []

    def measured(name, run):
        def call():
            _, wall = timed(run)
            timings[name].append(wall / len(new))
            return wall

        return call

    interleaved({"predict": measured("predict", predict_pass),
                 "keras predict": measured("keras predict", keras_predict_pass),
                 "monitor": measured("monitor", lambda: tests.append(monitor_pass()))},
                args.rounds, log=SECTION, contention=contention)
    ratio_mean = np.mean(timings["monitor"]) / np.mean(timings["predict"])
    ratio_max = np.max(timings["monitor"]) / np.max(timings["predict"])
    return [
        f"cost on {len(new)} real NIH PNGs (1024 px) with DenseNet121 at {COST_SIZE} px, {args.rounds} rounds, "
        "per film:",
        f"  (a) prediction pass (read, check, preprocess, the model called per batch of 16): "
        f"{describe(timings['predict'])}",
        f"  (a') the same through XrayModel.predict (Keras's predict loop, as `cxr predict`): "
        f"{describe(timings['keras predict'])}",
        f"  (b) monitor (profile in one pass + tests vs {len(reference_films)} reference films): "
        f"{describe(timings['monitor'])}; of which the permutation tests {describe(tests, 's', 1, 2)} per batch",
        f"  ratio (b)/(a): mean {ratio_mean:.2f}x, max {ratio_max:.2f}x (target <= {COST_TARGET}x on the mean): "
        f"{'met' if ratio_mean <= COST_TARGET else 'NOT met'}",
        f"  {contention_line(contention)}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--null-batches", type=int, default=100)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--reference-films", type=int, default=200)
    parser.add_argument("--clean-films", type=int, default=1000)
    parser.add_argument("--shifted-films", type=int, default=300)
    parser.add_argument("--cost-films", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    add_output_arguments(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as folder:
        lines = drift_lines(args, Path(folder))
    lines += cost_lines(args)
    report(args, SECTION, "Drift monitor: planted second-site drift, false alarms and cost", lines)


if __name__ == "__main__":
    main()
