"""Routed experts: a local bank, and expert-shard actors over Ray placed as the operator's placement says."""
