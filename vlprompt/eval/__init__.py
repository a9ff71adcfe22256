"""Evaluation: accuracy of a learner on a data set, base-to-novel runs."""

from vlprompt.eval.accuracy import harmonic_mean, evaluate_accuracy

__all__ = ["harmonic_mean", "evaluate_accuracy"]
