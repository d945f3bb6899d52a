"""The small core every stage shares: label conventions, patient-metadata
encoding, the model input contract, params, atomic writes, parallel maps,
progress lines, the stage runner, MLflow tracking and HTML pages."""
