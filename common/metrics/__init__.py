"""Metric reporting shared by the bundles' evaluation configs."""

from .summary import read_metrics_csv, write_metrics_summary

__all__ = ["read_metrics_csv", "write_metrics_summary"]
