"""The model: architectures, training, evaluation, the MLflow registry and the model card."""
