"""One ``Count`` metric: every job of the provider function counts its events the same way.

Powertools' ``MetricUnit`` is imported on the first count, not at import time, so that a module that only
might count stays off the cold-start path."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aws_lambda_powertools import Metrics


def count(metrics: Metrics, name: str) -> None:
    from aws_lambda_powertools.metrics import MetricUnit

    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
