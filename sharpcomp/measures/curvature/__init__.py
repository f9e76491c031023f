"""Curvature measures: top eigenvalues of the Hessian and Gauss-Newton matrices, traces, spectral density, batch
sharpness, non-uniformity, gradient statistics.
"""
