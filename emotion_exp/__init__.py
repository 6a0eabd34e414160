"""emotion-exp: the classic emotion text-classification study as a tracked MLflow project."""

__version__ = "0.1.0"
