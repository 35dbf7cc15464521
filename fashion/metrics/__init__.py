"""Metrics stage: per-attribute accuracy, macro-F1, top-5 and confusion matrices, and their reports.

Shared by training, `fashion-eval`, the data report and scripts, so it depends on no other stage.
"""

from fashion.metrics.attribute_metrics import AttributeMetrics, logged_names
from fashion.metrics.reports import classification_report, confused_pairs, confusion_figure

__all__ = ["AttributeMetrics", "logged_names", "classification_report", "confused_pairs", "confusion_figure"]
