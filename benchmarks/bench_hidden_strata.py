"""Benchmark: hidden strata and shortcuts (issue 30): a planted drain, the audit, the artefact check, slice discovery.

Do the labelled audit (evaluate.strata) and the artefact check catch a
planted shortcut, how often does the audit flag when nothing differs, and
what would slice discovery by embedding clusters flag?

Per seed (--seeds): two small_cnn models (tests/model/phantom_model.py: 600
phantom films, 64 px input, training seed = the seed), one trained with a
chest drain on 90% of pneumothorax films and 5% of the others
(ingest.phantom.shortcut), one without. Test films: a phantom of
--test-films with the same drains, its own seed (100 + seed); the first third
chooses the operating points (max_f1, as a validation split would), the rest
is audited.

(1) Labelled audit (pipeline.model.strata on the Drain column): pneumothorax
sensitivity without and with a drain, 95% CI of the difference, adjusted p,
flagged; and every comparison flagged, for both models.
(2) Artefact check (pipeline.explain.artefact_check): the mean change of each
finding's probability when a drain is drawn on 400 drain-less films lacking
it; pneumothorax's with its CI and flag, and the largest other finding's.
(3) Slice discovery as one would first build it (not shipped: this is why):
k-means (K=6) on the embedding (the head's input, standardised, 16 principal
components) fitted on the first third, the audited films assigned to
clusters, the clusters audited as a stratum column by the same exact test:
findings with a cluster flagged worse in sensitivity, of those tested, for
both models; and the share of the missed drain-less pneumothorax films that
fall in one cluster.
(4) Slice discovery against a calibrated null (the second approach measured,
not shipped either): per finding, its audited positives' embeddings with what
the labels and the patient columns explain removed (least squares on the
other findings, sex, view and age), their first SCAN_COMPONENTS principal
components, and every tail group along one of them (the SCAN_TAILS shares at
either end): the largest z for "missed more in the group than in the rest".
Its null is the same scan on simulated positives that are one Gaussian
population with the components' variances, whose logits keep the observed
linear relation to the components (and each film's own remainder), so hard
cases that shade into normal films are the null, not a discovery; p over
--scan-simulations simulations, flagged at 0.05 / findings tested. Reported:
pneumothorax's p and group, and the findings flagged, for both models.
(5) What ships instead, error auditing: the gallery's lowest-scoring missed
films of pneumothorax (pipeline.explain.explanations.select_examples, as
the explain stage picks them; params.yaml's explain.false_negatives, and 10)
among the audited films: how many lack a drain, against the share of the
audited pneumothorax films that do.
(6) The audit's false flags under no difference: --null-reports reports of
300 films with a column drawn at random, --null-resamples shuffles each.

    .venv/bin/python benchmarks/bench_hidden_strata.py [--seeds 5] [--test-films 3000] [--null-reports 1000]
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

import cv2
import numpy as np
import pandas as pd
from common import add_output_arguments, report

from pipeline.core.labels import FINDINGS
from pipeline.core.metrics import choose_thresholds
from pipeline.explain.artefact_check import artefact_effect, artefact_probabilities
from pipeline.explain.explanations import select_examples
from pipeline.model.strata import strata_report
from pipeline.monitor.profile import embedding_model
from pipeline.phantom.generate import Shortcut, generate_phantom
from tests.model.phantom_model import FILM_SIZE, model_input, train_phantom_model

SECTION = "bench_hidden_strata"
SHORTCUT = Shortcut("Pneumothorax", share_with=0.9, share_without=0.05)
PNEUMOTHORAX = FINDINGS.index("Pneumothorax")
CLUSTERS, COMPONENTS, ARTEFACT_FILMS = 6, 16, 400
SCAN_COMPONENTS, SCAN_TAILS, SCAN_MIN_FILMS = 5, (0.05, 0.1, 0.2, 0.3), 5
AUDITED_MISSES = 10  # beside params.yaml's explain.false_negatives


def test_set(folder: Path, films: int, seed: int) -> dict:
    root = folder / f"test-{seed}"
    generate_phantom(root, films, 100 + seed, image_size=FILM_SIZE, progress=False, workers=2, shortcut=SHORTCUT)
    entry = pd.read_csv(root / "Data_Entry_2017.csv")
    grays = [cv2.imread(str(root / "images" / name), cv2.IMREAD_GRAYSCALE) for name in entry["Image Index"]]
    return {"grays": grays, "inputs": np.stack([model_input(g) for g in grays]),
            "labels": np.array([[int(f in text.split("|")) for f in FINDINGS] for text in entry["Finding Labels"]]),
            "drain": entry["Drain"].to_numpy(), "patients": entry["Patient ID"].to_numpy(),
            "people": np.column_stack([entry["Patient Gender"].eq("F"), entry["View Position"].eq("AP"),
                                       entry["Patient Age"] / 100]).astype(float)}


def tail_scan(components: np.ndarray, missed: np.ndarray) -> tuple[float, np.ndarray]:
    """The largest z (pooled two-proportion) of "missed more in a tail group
    than in the rest" over every component, end and share; and that group."""
    n, pooled = len(missed), missed.mean()
    best, group = -np.inf, np.zeros(n, bool)
    for order in np.argsort(components, axis=0).T:
        for ranked in (order, order[::-1]):
            cumulative = np.cumsum(missed[ranked])
            for share in SCAN_TAILS:
                k = max(int(round(share * n)), SCAN_MIN_FILMS)
                inside, outside = cumulative[k - 1] / k, (cumulative[-1] - cumulative[k - 1]) / (n - k)
                z = (inside - outside) / (np.sqrt(pooled * (1 - pooled) * (1 / k + 1 / (n - k))) + 1e-12)
                if z > best:
                    best, group = z, np.isin(np.arange(n), ranked[:k])
    return float(best), group


def calibrated_scan(embeddings: np.ndarray, probs: np.ndarray, labels: np.ndarray, people: np.ndarray,
                    thresholds: dict, simulations: int, seed: int) -> dict:
    """Per finding: the tail scan's p against one Gaussian population (module notes (4)) and its group."""
    rng = np.random.default_rng(seed)
    results = {}
    for i, finding in enumerate(FINDINGS):
        positive = labels[:, i] == 1
        missed = (probs[positive, i] < thresholds[finding]).astype(float)
        if missed.sum() < 3 or positive.sum() < 4 * SCAN_MIN_FILMS:
            continue
        emb = embeddings[positive]
        emb = (emb - emb.mean(0)) / (emb.std(0) + 1e-9)
        design = np.column_stack([np.ones(len(emb)), np.delete(labels[positive], i, 1), people[positive]])
        residual = emb - design @ np.linalg.lstsq(design, emb, rcond=None)[0]
        u, s, _ = np.linalg.svd(residual, full_matrices=False)
        components = u[:, :SCAN_COMPONENTS] * s[:SCAN_COMPONENTS]
        logits = np.log(np.clip(probs[positive, i], 1e-7, 1 - 1e-7) / np.clip(1 - probs[positive, i], 1e-7, 1))
        cutoff = np.log(thresholds[finding] / (1 - thresholds[finding]))
        linear = np.column_stack([np.ones(len(emb)), components])
        beta = np.linalg.lstsq(linear, logits, rcond=None)[0]
        remainder = logits - linear @ beta
        observed, group = tail_scan(components, missed)
        spread = components.std(0)
        null = []
        for _ in range(simulations):
            simulated = rng.normal(size=components.shape) * spread
            null.append(tail_scan(simulated, (beta[0] + simulated @ beta[1:] + remainder < cutoff).astype(float))[0])
        results[finding] = {"p": (1 + sum(z >= observed for z in null)) / (1 + simulations), "z": observed,
                            "group": np.flatnonzero(positive)[group], "missed_in": missed[group].mean(),
                            "missed_out": missed[~group].mean()}
    for result in results.values():
        result["flagged"] = result["p"] <= 0.05 / len(results)
    return results


def discovered_clusters(embeddings: np.ndarray, fit: slice, audited: slice, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    mean, spread = embeddings[fit].mean(0), embeddings[fit].std(0) + 1e-9
    pca = PCA(COMPONENTS, random_state=seed).fit((embeddings[fit] - mean) / spread)
    kmeans = KMeans(CLUSTERS, n_init=10, random_state=seed).fit(pca.transform((embeddings[fit] - mean) / spread))
    return kmeans.predict(pca.transform((embeddings[audited] - mean) / spread))


def gallery_misses(probs: np.ndarray, labels: np.ndarray, drain: np.ndarray, thresholds: dict) -> dict:
    """Of the k lowest-scoring missed pneumothorax films the gallery would show
    (k = explain.false_negatives, then AUDITED_MISSES), how many lack a drain."""
    from pipeline.core.settings import load_settings

    shown = load_settings(Path(__file__).resolve().parents[1] / "params.yaml").explain.false_negatives
    table = pd.DataFrame({"image_id": [f"{i:06d}" for i in range(len(probs))]}
                         | {f"label_{f}": labels[:, i] for i, f in enumerate(FINDINGS)}
                         | {f"prob_{f}": probs[:, i] for i, f in enumerate(FINDINGS)})
    counts = {}
    for k in sorted({shown, AUDITED_MISSES}):
        chosen = select_examples(table, thresholds, 0, 0, k)
        rows = chosen[chosen["finding"] == "Pneumothorax"]["image_id"].astype(int).to_numpy()
        counts[k] = (int((drain[rows] == 0).sum()), len(rows))
    positive = labels[:, PNEUMOTHORAX] == 1
    return {"counts": counts, "drainless_share": float((drain[positive] == 0).mean())}


def one_model(model, films: dict, seed: int, simulations: int) -> dict:
    n = len(films["labels"])
    fit, audited = slice(0, n // 3), slice(n // 3, None)
    embeddings, probs = embedding_model(model.keras_model).predict(films["inputs"], batch_size=128, verbose=0)
    probs = model.recalibrate(probs)
    labels, patients, drain = films["labels"], films["patients"], films["drain"]
    thresholds, _ = choose_thresholds(labels[fit], probs[fit], "max_f1")
    audit = strata_report(labels[audited], probs[audited], thresholds, patients[audited],
                          {"Drain": [str(v) for v in drain[audited]]}, resamples=1000, seed=seed)
    pneumothorax = next(g for g in audit["gaps"] if g["finding"] == "Pneumothorax" and g["metric"] == "sensitivity")
    plain = np.flatnonzero(drain == 0)[:ARTEFACT_FILMS]
    without, drawn = artefact_probabilities(model, [films["grays"][i] for i in plain], "drain", seed)
    effect = artefact_effect(without, drawn, labels[plain], patients[plain], FINDINGS, seed=seed)["by_finding"]
    others = {f: e["mean_change"] for f, e in effect.items() if f != "Pneumothorax" and e["mean_change"] is not None}
    clusters = discovered_clusters(embeddings.astype(np.float64), fit, audited, seed)
    discovery = strata_report(labels[audited], probs[audited], thresholds, patients[audited],
                              {"cluster": [f"c{k}" for k in clusters]}, resamples=1000, seed=seed)
    tested = {g["finding"] for g in discovery["gaps"] if g["p_value"] is not None}
    worse = {g["finding"] for g in discovery["flagged"] if g["metric"] == "sensitivity" and g["difference"] < 0}
    missed = ((probs[audited][:, PNEUMOTHORAX] < thresholds["Pneumothorax"]) & (labels[audited][:, PNEUMOTHORAX] == 1)
              & (drain[audited] == 0))
    counts = np.bincount(clusters[missed], minlength=CLUSTERS)
    scan = calibrated_scan(embeddings[audited].astype(np.float64), probs[audited], labels[audited],
                           films["people"][audited], thresholds, simulations, seed)
    in_group = np.isin(np.flatnonzero(missed), scan["Pneumothorax"]["group"]) if "Pneumothorax" in scan else []
    audit_gallery = gallery_misses(probs[audited], labels[audited], drain[audited], thresholds)
    return {"scan": scan, "scan_missed_in_group": int(np.sum(in_group)), "gallery": audit_gallery,
            "pneumothorax": pneumothorax, "flags": audit["flagged"], "artefact": effect["Pneumothorax"],
            "other_artefact": max(others.items(), key=lambda item: item[1]), "tested": len(tested),
            "worse": sorted(worse), "missed": int(missed.sum()), "in_one_cluster": int(counts.max())}


def model_lines(kind: str, seed: int, result: dict) -> list[str]:
    gap = result["pneumothorax"]
    if gap["difference"] is None:
        audit = f"pneumothorax by drain: {gap['reason']}"
    else:
        low, high = gap["interval"]
        audit = (f"pneumothorax sensitivity without/with drain {gap['value']:.2f}/{gap['versus_value']:.2f}, "
                 f"difference {gap['difference']:+.2f} [{low:+.2f}, {high:+.2f}], adjusted p {gap['p_value']:.3f}"
                 f"{' FLAGGED' if gap['flagged'] else ''}")
    art = result["artefact"]
    other, change = result["other_artefact"]
    flagged = ", ".join(f"{g['finding']} {g['metric']}" for g in result["flags"]) or "none"
    return [f"seed {seed} {kind}:",
            f"  audit: {audit}; all flags: {flagged}",
            f"  artefact: pneumothorax {art['mean_change']:+.3f} [{art['ci'][0]:+.3f}, {art['ci'][1]:+.3f}]"
            f"{' raised' if art['raised'] else ''}; largest other: {other} {change:+.3f}",
            f"  slice discovery: {len(result['worse'])} of {result['tested']} findings flagged worse in a cluster "
            f"({', '.join(result['worse']) or 'none'}); missed drain-less pneumothorax films "
            f"{result['in_one_cluster']} of {result['missed']} in one cluster",
            f"  calibrated scan: {scan_line(result)}",
            f"  gallery's missed pneumothorax films: {gallery_line(result['gallery'])}"]


def gallery_line(gallery: dict) -> str:
    shown = "; ".join(f"of the {k} lowest-scoring, {drainless} of {n} lack a drain"
                      for k, (drainless, n) in gallery["counts"].items())
    return f"{shown} (of all audited pneumothorax films, {100 * gallery['drainless_share']:.0f}% lack one)"


def scan_line(result: dict) -> str:
    scan = result["scan"]
    flagged = [f for f, r in scan.items() if r["flagged"]]
    text = f"{len(flagged)} of {len(scan)} findings flagged ({', '.join(flagged) or 'none'})"
    if "Pneumothorax" in scan:
        r = scan["Pneumothorax"]
        text += (f"; pneumothorax p {r['p']:.3f}, group of {len(r['group'])} positives missed {r['missed_in']:.2f} "
                 f"vs {r['missed_out']:.2f}, holding {result['scan_missed_in_group']} of {result['missed']} "
                 "missed drain-less pneumothorax films")
    return text


def null_lines(reports: int, resamples: int) -> list[str]:
    rng = np.random.default_rng(2026)
    flagged = 0
    for _ in range(reports):
        labels = (rng.random((300, len(FINDINGS))) < 0.3).astype(int)
        probs = np.clip(0.5 + 0.25 * (labels - 0.5) + rng.normal(0, 0.2, labels.shape), 0, 1)
        column = np.where(rng.random(300) < 0.4, "a", "b")
        result = strata_report(labels, probs, [0.5] * len(FINDINGS), np.arange(300) // 2, {"Site": list(column)},
                               resamples=resamples, seed=int(rng.integers(1 << 30)))
        flagged += bool(result["flagged"])
    rate = flagged / reports
    return [f"audit under no difference: {flagged} of {reports} reports flagged ({100 * rate:.1f}%, binomial SE "
            f"{100 * np.sqrt(rate * (1 - rate) / reports):.1f}%; nominal 5%), 300 films of 150 patients, 28 "
            f"comparisons, {resamples} shuffles"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--test-films", type=int, default=3000)
    parser.add_argument("--scan-simulations", type=int, default=400)
    parser.add_argument("--null-reports", type=int, default=1000)
    parser.add_argument("--null-resamples", type=int, default=200)
    add_output_arguments(parser)
    args = parser.parse_args()
    lines, summary = [], {"shortcut": [], "clean": []}
    with tempfile.TemporaryDirectory(prefix="bench-strata-") as folder:
        for seed in range(args.seeds):
            films = test_set(Path(folder), args.test_films, seed)
            for kind, shortcut in (("shortcut", SHORTCUT), ("clean", None)):
                model, _ = train_phantom_model(Path(folder) / f"{kind}-{seed}", seed=seed, shortcut=shortcut)
                result = one_model(model, films, seed, args.scan_simulations)
                summary[kind].append(result)
                lines += model_lines(kind, seed, result)
                print("\n".join(lines[-6:]), flush=True)
    for kind, results in summary.items():
        flagged = sum(r["pneumothorax"]["flagged"] for r in results)
        raised = sum(r["artefact"]["raised"] for r in results)
        worse = sum(len(r["worse"]) for r in results)
        tested = sum(r["tested"] for r in results)
        held = sum(r["in_one_cluster"] for r in results)
        missed = sum(r["missed"] for r in results)
        lines.append(f"{kind} models over {len(results)} seeds: pneumothorax-by-drain flagged in {flagged}, "
                     f"drawn drain raises pneumothorax in {raised}; slice discovery flags {worse} of {tested} "
                     f"findings tested ({100 * worse / max(tested, 1):.0f}%); one cluster holds {held} of {missed} "
                     "missed drain-less pneumothorax films")
        scanned = sum(len(r["scan"]) for r in results)
        scan_flags = sum(r2["flagged"] for r in results for r2 in r["scan"].values())
        ptx = [r["scan"]["Pneumothorax"]["p"] for r in results if "Pneumothorax" in r["scan"]]
        for k in sorted(results[0]["gallery"]["counts"]):
            drainless = sum(r["gallery"]["counts"][k][0] for r in results)
            shown = sum(r["gallery"]["counts"][k][1] for r in results)
            share = np.mean([r["gallery"]["drainless_share"] for r in results])
            lines.append(f"{kind} models, the gallery's {k} lowest-scoring missed pneumothorax films (fewer when "
                         f"fewer are missed): {drainless} of {shown} lack a drain (of all audited pneumothorax "
                         f"films, {100 * share:.0f}% lack one)")
        lines.append(f"{kind} models, calibrated scan: {scan_flags} of {scanned} findings flagged "
                     f"({100 * scan_flags / max(scanned, 1):.1f}%); pneumothorax p "
                     f"{', '.join(f'{p:.3f}' for p in ptx)}")
    lines += null_lines(args.null_reports, args.null_resamples)
    report(args, SECTION, "Hidden strata: a planted drain shortcut, the labelled audit, the artefact check and "
                          "slice discovery", lines)


if __name__ == "__main__":
    main()
