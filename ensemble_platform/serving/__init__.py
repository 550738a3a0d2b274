"""The ensemble at prediction time: the runtime object and its MLflow pyfunc wrapper."""
