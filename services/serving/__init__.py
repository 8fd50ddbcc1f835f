"""Serving: classifies every valid frame with the champion (and the challenger in shadow)."""
