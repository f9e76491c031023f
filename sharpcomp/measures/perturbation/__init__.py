"""Perturbation measures: how the loss rises under weight perturbations (worst case, average case, Keskar, PAC-
Bayes, Fisher-ball regret).
"""
