"""Tracking stage: the MLflow run (`run`: store, identity, life), what it records (`artifacts`) and
the Lightning logger that writes its metrics (`logger`).

Imported on first use: the Hydra callback that prepares the store runs before every job, and importing
`artifacts` eagerly pulled in Lightning and the data stage (5 s on 2 cores) before a misspelt `+key` or a
missing search space was refused.
"""

from fashion import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "fashion.config": ["tracking_uri"],
    "fashion.tracking.artifacts": ["MLflowArtifacts", "describe_run", "log_run_inputs"],
    "fashion.tracking.logger": ["MLflowRunLogger"],
    "fashion.tracking.run": ["PrepareMLflowStore", "ensure_experiment", "find_resume_point", "tracked_run"],
})
