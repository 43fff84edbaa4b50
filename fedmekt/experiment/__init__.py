"""Experiment tooling: the in-process federation, reference rows, validation splits, statistics,
byte accounting and the paper's published figures."""
