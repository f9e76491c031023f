"""Algorithms and helpers the measures share, not measures themselves: Lanczos, Hutchinson, Hutch++, Auto-PGD,
matrix-vector products, operator norms, parameter vectors, float32 precision, Monte-Carlo means.
"""
