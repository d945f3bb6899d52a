"""Chest X-ray pipeline. The prediction API is importable from here:

    from pipeline import load_model, preprocess_xray, generate_gradcam

It is loaded on first use (PEP 562), because worker processes import
pipeline.records.imaging and must not pull TensorFlow in with this package.
"""
from __future__ import annotations

import importlib

from pipeline.core.quiet import quiet_libraries

# Here, because `import pipeline` comes before any of our modules imports
# TensorFlow or MLflow, in stages, `cxr`, workers and the API alike.
quiet_libraries()

LAZY_API = {
    "load_model": "pipeline.serve.predict",
    "preprocess_xray": "pipeline.serve.predict",
    "generate_gradcam": "pipeline.serve.predict",
    "XrayModel": "pipeline.serve.predict",
    "ModelLoadError": "pipeline.serve.predict",
}
__all__ = list(LAZY_API)


def __getattr__(name: str):
    if name not in LAZY_API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(LAZY_API[name]), name)
