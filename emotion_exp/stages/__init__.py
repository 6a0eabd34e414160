"""One module per stage: load, compute and log inside the stage's MLflow run.

Each module has ``run(config) -> run_id``; the click commands and MLproject entry points call it.
"""
