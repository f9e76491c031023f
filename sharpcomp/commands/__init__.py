"""The commands that act on trained runs and results: measure, reparam, landscape, figures, runs."""
