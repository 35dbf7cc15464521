"""What `GET /metrics` tells Prometheus: traffic, latency, errors by code, the confidence and review
share of served predictions, and label drift.

Drift is the population stability index (PSI) of each attribute's predicted labels over the last
`window` predictions against the label distribution of the model's training split (the counts saved
in its vocabularies): sum over classes of (p - q) * ln(p / q). Rules of thumb: < 0.1 stable, 0.1-0.25
a shift worth a look, > 0.25 a different population (a new season's catalogue, a new supplier's photos).
Metrics live in one registry per app, so several apps (tests, a reload) never collide.
"""

from __future__ import annotations

import math
import threading
from collections import Counter as Tally
from collections import deque
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fashion.data.vocab import LabelVocabulary

CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0)
SMOOTHING = 1e-4   # a class seen in one distribution and not the other would make PSI infinite


def psi(observed: dict[str, float], expected: dict[str, float]) -> float:
    classes = set(observed) | set(expected)
    total = 0.0
    for c in classes:
        p, q = observed.get(c, 0.0) + SMOOTHING, expected.get(c, 0.0) + SMOOTHING
        total += (p - q) * math.log(p / q)
    return total


class Monitor:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, vocabularies: dict[str, LabelVocabulary], window: int = 500) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("fashion_requests", "HTTP requests by route and status", ["route", "status"], registry=registry)
        self.latency = Histogram("fashion_request_seconds", "Request latency by route", ["route"], registry=registry)
        self.errors = Counter("fashion_errors", "Error responses by error code", ["code"], registry=registry)
        self.confidence = Histogram("fashion_prediction_confidence", "Calibrated confidence of served predictions",
                                    ["attribute"], buckets=CONFIDENCE_BUCKETS, registry=registry)
        self.predictions = Counter("fashion_predictions", "Served predictions by attribute and review status",
                                   ["attribute", "status"], registry=registry)
        self.review_share = Gauge("fashion_needs_review_share", "Share of the last `window` predictions needing review",
                                  ["attribute"], registry=registry)
        self.drift = Gauge("fashion_label_drift_psi", "PSI of the last `window` predicted labels against the training labels",
                           ["attribute"], registry=registry)
        self.not_queued = Counter("fashion_review_not_queued", "Photos needing review that were not queued, by reason",
                                  ["reason"], registry=registry)
        self.window_size = Gauge("fashion_drift_window", "Predictions in the drift window", registry=registry)
        self.lock, self.window = threading.Lock(), window
        self.recent: dict[str, deque[tuple[str, bool]]] = {}
        self.reference(vocabularies)

    def reference(self, vocabularies: dict[str, LabelVocabulary]) -> None:
        """The training distribution to compare against (set again when a reload swaps the model). An attribute the
        new model does not tag leaves the window gauges: they showed its last values for good, as if still served."""
        with self.lock:
            for attribute in set(self.recent) - set(vocabularies):
                self.review_share.remove(attribute)   # a label set never set is no error
                self.drift.remove(attribute)
            self.expected = {a: normalised(dict(zip(v.classes, v.counts))) for a, v in vocabularies.items() if v.counts}
            self.recent = {a: deque(maxlen=self.window) for a in vocabularies}

    def observe(self, predictions: dict[str, dict[str, Any]]) -> None:
        """One image's served predictions ({attribute: Prediction.to_dict()})."""
        with self.lock:
            for attribute, p in predictions.items():
                self.confidence.labels(attribute).observe(p["confidence"])
                self.predictions.labels(attribute, p["status"]).inc()
                if attribute in self.recent:
                    self.recent[attribute].append((p["label"], p["status"] != "accepted"))

    def exposition(self) -> bytes:
        with self.lock:
            for attribute, recent in self.recent.items():
                if not recent:
                    continue
                self.review_share.labels(attribute).set(sum(review for _, review in recent) / len(recent))
                if attribute in self.expected:
                    self.drift.labels(attribute).set(psi(normalised(Tally(label for label, _ in recent)), self.expected[attribute]))
            self.window_size.set(max((len(r) for r in self.recent.values()), default=0))
        return generate_latest(self.registry)


def normalised(counts: dict[str, float]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}
