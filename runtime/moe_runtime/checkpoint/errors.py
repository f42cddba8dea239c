"""One exception for every way a checkpoint can be unusable; the message names the file and the tensor."""
from __future__ import annotations


class CheckpointError(Exception):
    """A checkpoint is missing, truncated or inconsistent with its config.json."""

    def __init__(self, message: str, *, file: str | None = None, tensor: str | None = None):
        self.file = file
        self.tensor = tensor
        where = []
        if file:
            where.append(f"file {file}")
        if tensor:
            where.append(f"tensor {tensor}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
