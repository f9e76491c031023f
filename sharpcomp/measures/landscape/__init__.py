"""Loss landscapes: 1-D lines, 2-D planes and interpolations between networks."""
