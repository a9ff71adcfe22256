"""Evaluation: accuracy of a learner on a data set, base-to-novel runs, the protocol suite and reports.

Submodules are imported where they are used, so ``vlprompt report --help`` does not load Lightning.
"""
