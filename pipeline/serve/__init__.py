"""Serving: the prediction API, the `cxr` command line and the registered MLflow pyfunc."""
