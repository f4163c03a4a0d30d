"""Evaluation bench: metrics, batch runner, reports and listening-test statistics."""
