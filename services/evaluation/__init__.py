"""Evaluation: scores a candidate model on holdouts and decides whether it may be blessed."""
