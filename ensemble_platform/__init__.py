"""ensemble_platform: build, validate, govern and ship multi-model ensembles."""

__version__ = "0.1.0"
