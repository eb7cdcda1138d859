"""Deciding before training: the memory estimate per method and the recommendation (decision, method, hyperparameters, time, cost). Light."""
