"""Analyses of finished sweeps: which measure predicts generalisation, by the field's ranking protocol."""
