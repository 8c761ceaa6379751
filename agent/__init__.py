"""drain-agent: a PID-1 wrapper that drains a server in HAProxy before its app stops.

Nothing is imported here: `drain-agent` (agent.__main__) catches stop signals and decides on
OpenSSL before any import of its own; `from agent.machine import Agent` and the like.
"""

__version__ = "0.1.0"  # the distribution's (pyproject.toml; tests/unit/test_config.py keeps them equal)
