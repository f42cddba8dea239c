"""Offline replay of request traces through a queueing model of the fleet, for our policy, baselines and the optimum."""
