"""How much data a figure needs before it is shown as a number.

The defaults of evaluate.min_slice_positives and evaluate.min_slice_patients
(params.yaml), shared by the evaluate stage, the subgroup report, the
champion comparison and `cxr evaluate`; why these values:
docs/evaluation.md#too-little-data. Below a floor a figure is None with the
reason ("too few positives (n=1)"), never an AUC of 1.000 on one film.
"""
# An AUC needs this many positive and as many negative films; an
# underdiagnosis rate this many films with a finding.
MIN_POSITIVES = 10
# Every figure of a slice (and any interval) needs films of this many patients:
# the bootstrap resamples patients, and with fewer its intervals are too narrow.
MIN_PATIENTS = 10
# A threshold is chosen from at least this many positive and as many negative
# validation films of its finding; with one, it would be that one film's score
# (a one-patient validation split gave Youden cuts of 1.0). Below it the
# threshold falls back and is listed in thresholds_defaulted.
MIN_THRESHOLD_FILMS = 2
