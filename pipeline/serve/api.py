"""The one door from the model package into serving: what the evaluate stage
needs to score a registered champion exactly as it is served, and the pyfunc
class a model is registered as. Serving imports nothing from the model
package; the model package imports only this module of serving."""
from __future__ import annotations

from pipeline.serve.model_store import require_tracking_store
from pipeline.serve.predict import ModelLoadError, XrayModel, load_model

__all__ = ["ModelLoadError", "XrayModel", "load_model", "pyfunc_model", "require_tracking_store"]


def pyfunc_model():
    """A new instance of the pyfunc a model is logged as (pipeline.serve.pyfunc).
    Imported when called: MLflow warns once, when the class is defined."""
    from pipeline.serve.pyfunc import ChestXrayPyfunc

    return ChestXrayPyfunc()
