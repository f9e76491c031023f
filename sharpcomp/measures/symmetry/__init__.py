"""Symmetries of ReLU networks: the rescaling graph, the quotient projector and the reparametrisation test."""
