"""The rollout CLI's one error type: a one-line message and an exit code."""

from __future__ import annotations


class RolloutError(Exception):
    """An expected failure: bad input, a stack that is not up, an instance that never came up."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def last_line(text: str) -> str:
    """A failed command's last words (its stderr), for a one-line message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no error output)"
