"""moe-operator control plane: api -> catalog -> planning -> render -> handlers."""

__version__ = "0.1.0"
