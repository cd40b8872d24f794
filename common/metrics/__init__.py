"""Metric reporting shared by the bundles' evaluation configs."""

from .summary import format_metric, read_metrics_csv, summarize_metrics, write_metrics_summary

__all__ = ["format_metric", "read_metrics_csv", "summarize_metrics", "write_metrics_summary"]
