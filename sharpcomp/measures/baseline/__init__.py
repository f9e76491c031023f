"""Baselines the generalisation literature ranks flatness against: norms, distances and the loss's gradient."""
