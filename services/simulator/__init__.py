"""Simulator: the camera fleet and the annotation team (synthetic frames, late labels)."""
