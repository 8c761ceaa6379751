"""A HAProxy in a container (compose's, each of Swarm's two), as `rollout` reaches it: through
`docker exec` only. Its Runtime API listens on the container's own loopback, which no app can
reach and nothing publishes; the official image has no socat, so one bash `/dev/tcp` line sends
the command. This is the one place that knows how; the reload and every read are deploy/door.py's."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence

from deploy.errors import RolloutError, last_line

# One Runtime API command: HAProxy answers and closes.
RUNTIME_API_SCRIPT = 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1; printf "%s\\n" "$2" >&3; cat <&3'
# The servers' states, from stdin to where the new worker reads them, whole or not at all.
WRITE_STATE_SCRIPT = 'cat > "$1.new" && mv -f "$1.new" "$1"'
NO_SHELL = (126, 127)  # docker exec: found but not runnable, not found

Exec = Callable[[Sequence[str], "str | None"], "subprocess.CompletedProcess[str]"]


class ContainerHAProxy:
    """`run_in(argv, stdin)` runs a program in the HAProxy's container (`docker compose exec`,
    `docker exec`); `kill(signal)` signals its PID 1, HAProxy's master; `args` and `env` are its
    command line and environment as the engine's model has them."""

    def __init__(self, name: str, run_in: Exec, kill: Callable[[str], None],
                 args: Sequence[str], env: Mapping[str, str], where: str) -> None:
        self.name = name
        self.run_in = run_in
        self.kill = kill
        self.args = [str(arg) for arg in args]
        self.env = {str(k): str(v) for k, v in env.items()}
        self.where = where  # where its environment is written, for messages

    def admin_port(self) -> str:
        address = self.env.get("HAPROXY_ADMIN_SOCKET", "")
        port = address.rpartition(":")[2]
        if not port.isdigit():
            raise RolloutError(f"HAPROXY_ADMIN_SOCKET {address!r} of {self.name} in {self.where}: "
                               "expected a TCP address on its loopback, such as ipv4@127.0.0.1:9999")
        return port

    def command(self, line: str) -> str:
        result = self.run_in(["bash", "-c", RUNTIME_API_SCRIPT, "_", self.admin_port(), line], None)
        if result.returncode in NO_SHELL and "bash" in result.stdout + result.stderr:
            raise RolloutError(f"{self.name}: its image has no bash, which `rollout` uses to reach "
                               "the Runtime API inside the container (the official haproxy images "
                               "have it; the alpine ones do not)")
        if result.returncode != 0:
            raise RolloutError(f"{self.name}: the Runtime API (`{line}`) through docker exec "
                               f"failed: {last_line(result.stderr)}")
        return result.stdout

    def config_alert(self) -> str | None:
        """`haproxy -c` in the container on its own command line's files; the first alert."""
        if self.args[:1] != ["haproxy"]:
            return None  # an entrypoint of its own: HAProxy's master refuses a bad file itself
        check = self.run_in(["haproxy", "-c", *self.args[1:]], None)
        if check.returncode == 0:
            return None
        return next((line for line in (check.stdout + check.stderr).splitlines() if "[ALERT]" in line),
                    last_line(check.stderr))

    @property
    def state_file(self) -> str | None:
        return self.env.get("HAPROXY_SERVER_STATE_FILE") or None

    def put_state(self, text: str) -> None:
        assert self.state_file is not None
        result = self.run_in(["sh", "-c", WRITE_STATE_SCRIPT, "_", self.state_file], text)
        if result.returncode != 0:
            raise RolloutError(f"{self.name}: could not write {self.state_file}: {last_line(result.stderr)}")

    def drop_state(self) -> None:
        if self.state_file is not None:
            self.run_in(["rm", "-f", self.state_file], None)

    def signal_reload(self) -> None:
        self.kill("USR2")
