"""Feedback stage: the review queue of predictions a person should check, their corrections, and the
corrected items exported as training data (the improvement loop: serve -> review -> retrain)."""

from fashion.feedback.store import ReviewStore

__all__ = ["ReviewStore"]
