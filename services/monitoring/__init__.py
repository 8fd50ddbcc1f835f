"""Monitoring: live accuracy per model version from late labels, drift, retrain triggers."""
