"""The synthetic chest phantom: NIH-format films with findings planted at known boxes.

Modules, each depending only on those above it: plan (labels of every film),
geometry (pose, anatomy shapes, the Film canvas), anatomy (normal anatomy),
findings (plant_* per finding), render (one film and its boxes), generate
(the data set on disk and the phantom stage's write_phantom).
"""
