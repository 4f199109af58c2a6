"""Experiment tracking, injected: library code receives a ``Tracker`` and never asks whether MLflow is on.

- :class:`MLflowTracker` logs to one MLflow run; ``child(name)`` opens a nested run.
- :class:`NullTracker` is its do-nothing twin (``tracking.enabled: false``).
- :class:`TrackerHandle` is the picklable address of a run, for Ray workers and Tune trials:
  ``tracker_from_handle(handle)`` reopens the same run in another process.
"""

from ray_distill.tracking.mlflow_tracker import (
    MLflowTracker,
    NullTracker,
    Tracker,
    TrackerHandle,
    default_tracking_uri,
    start_tracker,
    tracker_from_handle,
)

__all__ = [
    "MLflowTracker",
    "NullTracker",
    "Tracker",
    "TrackerHandle",
    "default_tracking_uri",
    "start_tracker",
    "tracker_from_handle",
]
