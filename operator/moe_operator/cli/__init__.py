"""`moectl`: the offline front door (plan, render, up, simulate, cost, rebalance)."""
