"""One root error for the agent; each carries the exit code `drain-agent` ends with."""

from __future__ import annotations

EXIT_USAGE = 2  # bad flags, bad addresses, missing command
EXIT_START_TIMEOUT = 3  # the app never became ready
EXIT_HAPROXY = 4  # an operator tool could not use HAProxy
EXIT_EXEC_FAILED = 126  # command found but not runnable
EXIT_NOT_FOUND = 127  # command not found


class AgentError(Exception):
    """Something stops the agent; `exit_code` says how it ends."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(AgentError):
    """A flag or environment variable is missing or invalid."""

    exit_code = EXIT_USAGE


# HAProxy Runtime API errors...


class HAProxyError(AgentError):
    """HAProxy (its stats or its Runtime API) could not be used."""

    exit_code = EXIT_HAPROXY


class HAProxyConnectError(HAProxyError):
    """The Runtime API socket could not be reached or did not answer in time."""


class HAProxyCommandError(HAProxyError):
    """HAProxy answered a command with an error message."""


class HAProxyParseError(HAProxyError):
    """HAProxy's answer was not in the expected format (truncated or garbage)."""
