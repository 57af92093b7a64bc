"""The one error type of every model reader and loader (no heavy imports: the CLI catches it cheaply)."""

from __future__ import annotations

import os

__all__ = ["CheckpointError", "UnsafeCheckpointError", "listing"]


class CheckpointError(ValueError):
    """A model file or folder that cannot be used; the message names the file (and the key, when one is at fault).

    `path` (str or None), `reason` (the message without the path) and `key` (or None) are kept as attributes.
    A ValueError, so callers that treat bad input generically keep working.
    """

    def __init__(self, path: str | os.PathLike | None, reason: str, key: str | None = None):
        self.path = None if path is None else str(path)
        self.reason = reason
        self.key = key
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class UnsafeCheckpointError(CheckpointError):
    """The pickle references a global outside the allow-list; nothing of it was called."""

    def __init__(self, path: str | os.PathLike | None, global_name: str, reason: str = ""):
        self.global_name = global_name
        msg = (
            f"refusing to unpickle: it references the global '{global_name}', which is not on the allow-list "
            "of a checkpoint reader (checkpoints are untrusted input; nothing was executed)"
        )
        if reason:
            msg += f": {reason}"
        super().__init__(path, msg, key=global_name)


def listing(items, limit: int = 10) -> str:
    """'a, b, c' for error messages: the first `limit` items, then '(+N more)'."""
    items = list(items)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(str(i) for i in items[:limit]) + more
