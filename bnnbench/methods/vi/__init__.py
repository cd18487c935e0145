"""Variational inference with a diagonal Gaussian: `score-vi` (score.py) and `elbo-vi` (elbo.py).

They share the family and prior (family.py), the MAP warm-up, the network's mini-batch log-likelihood and
the predictive (common.py), and differ only in their objective (objectives.py).
"""
