"""What a saved or registered model takes and gives, in one dependency-free place.

Shared by training, evaluation, Grad-CAM, the prediction API and the
registered pyfunc, so that the registry and serving code need not import each
other (and a registered model ships this module without the training code).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.core.patient import IMAGE_INPUT, PATIENT_INPUT

# The name of the registered pyfunc's .keras artifact (pipeline.serve.pyfunc).
KERAS_ARTIFACT = "keras_model"
# The name of its reference profile artifact (pipeline.monitor.reference): the
# test films it was measured on, profiled, for `cxr monitor`.
REFERENCE_ARTIFACT = "reference_profile"
# Written beside a registered pyfunc's MLmodel once its version exists
# (pipeline.model.registry): {"name", "version"}, which a model cannot know
# when it is logged; its server names the version in every answer.
REGISTRATION_FILE = "registered_version.json"


def load_keras_model(path: Path | str):
    """A .keras file saved by the train stage (no compile state: inference only)."""
    import keras

    return keras.models.load_model(path, compile=False)


def uses_patient_metadata(model) -> bool:
    """Whether the model takes patient metadata (age, sex, view) beside the image."""
    return any(tensor.name == PATIENT_INPUT for tensor in model.inputs)


def image_size_of(model) -> int:
    """The side of the square image the model takes."""
    image = next((t for t in model.inputs if t.name == IMAGE_INPUT), model.inputs[0])
    return int(image.shape[1])


def model_inputs(model, images, metadata=None):
    """What to call `model` with: the images, or {"image", "metadata"} for a
    model with patient metadata, which must then be given `metadata`."""
    if not uses_patient_metadata(model):
        if metadata is not None:
            raise ValueError(f"model {model.name} takes no patient metadata (trained without train.use_metadata)")
        return images
    if metadata is None:
        raise ValueError(f"model {model.name} was trained with patient metadata (train.use_metadata): "
                         "give each image's age, sex and view")
    return {IMAGE_INPUT: images, PATIENT_INPUT: metadata}
