"""The study's measures: the metric engine (S, G, log volume, MLS, local dimensionality, the bounds), network-wide
compression and matrix-free estimates.
"""
