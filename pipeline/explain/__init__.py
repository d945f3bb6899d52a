"""Explanations: Grad-CAM maps, localisation scores against NIH boxes, and the gallery page."""
