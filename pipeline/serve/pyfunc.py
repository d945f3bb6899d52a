"""The registered model as an MLflow pyfunc with named outputs.

    pyfunc = mlflow.pyfunc.load_model("models:/chestxray@champion")
    pyfunc.predict(images)  # DataFrame: one row per image, one column per finding (FINDINGS order)

`images` are preprocessed float32 (n, size, size, 1) grey values 0..255
(pipeline.serve.predict.preprocess_xray, which is where a film is checked:
too small, too elongated or lateral films are refused there, since a
preprocessed array no longer shows the film's shape). Anything else is
refused with the shape or values expected. A model registered with a
recalibration (evaluate.calibration) returns recalibrated probabilities. A model trained with patient metadata
takes {"image": images, "metadata": ...}, the metadata either encoded
(n, 3) (pipeline.core.patient) or as rows of age, sex and view (a DataFrame or
a list of dicts). `mlflow models serve` answers with the finding names too.

The Keras model travels as the artifact KERAS_ARTIFACT (a plain .keras
file), so pipeline.serve.predict.load_model reads it without unpickling anything,
or importing this module (MLflow warns, once, when the class is defined).
"""
from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd

from pipeline.core.labels import FINDINGS
from pipeline.core.model_io import KERAS_ARTIFACT
from pipeline.core.patient import IMAGE_INPUT, PATIENT_INPUT, encode_patient_input
from pipeline.core.recalibration import served_probabilities


# MLflow 3.17 warns (once, at class creation) that predict has no type hints;
# its type-hint schemas cannot express our array-or-dict input, so it stays untyped.
class ChestXrayPyfunc(mlflow.pyfunc.PythonModel):
    """Probabilities per finding, as a DataFrame with the findings' names."""

    def load_context(self, context) -> None:
        import keras

        self.model = keras.models.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)
        self.recalibration = (context.model_config or {}).get("recalibration")

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from pipeline.core.model_io import model_inputs

        if isinstance(model_input, dict):
            images = self.checked_images(model_input[IMAGE_INPUT])
            metadata = model_input.get(PATIENT_INPUT)
            metadata = None if metadata is None else encode_patient_input(metadata, len(images))
        else:
            images, metadata = self.checked_images(model_input), None
        probabilities = self.model.predict(model_inputs(self.model, images, metadata), verbose=0)
        return pd.DataFrame(served_probabilities(probabilities, self.recalibration), columns=list(FINDINGS))

    def checked_images(self, images) -> np.ndarray:
        """preprocess_xray's output stacked, or ValueError saying what is expected: a film read
        another way (another size, raw 16-bit values) would be scored without complaint."""
        from pipeline.core.model_io import image_size_of

        size = image_size_of(self.model)
        array = np.asarray(images, dtype=np.float32)
        if array.ndim != 4 or array.shape[1:] != (size, size, 1):
            raise ValueError(f"expected preprocessed images of shape (n, {size}, {size}, 1) "
                             f"(pipeline.serve.predict.preprocess_xray), got {array.shape}")
        if not np.isfinite(array).all() or array.min(initial=0) < 0 or array.max(initial=0) > 255:
            raise ValueError("expected grey values 0..255 (pipeline.serve.predict.preprocess_xray), got "
                             f"{np.nanmin(array):g}..{np.nanmax(array):g}")
        return array
