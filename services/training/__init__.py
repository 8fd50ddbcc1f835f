"""Training: turns retrain requests into candidate models with their lineage."""
