"""moe-operator data plane: the built-in torch MoE engine served through Ray Serve."""

__version__ = "0.1.0"
