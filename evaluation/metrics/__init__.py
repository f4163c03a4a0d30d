"""Objective metrics. Each takes numpy audio and returns a float, or raises MetricError."""

from evaluation.metrics.signal import MetricError, pesq_score, stoi_score

__all__ = ["MetricError", "pesq_score", "stoi_score"]
