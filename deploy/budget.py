"""The time budget, written once (README, "Time budget"). Every file that carries one of these
numbers (haproxy.cfg, the compose and stack files, the image, the local stack's supervisor
programs) is checked against them by tests/unit/test_time_budget.py.

The longest request the service allows < HAProxy's `timeout server` < the drain; the drain
plus the app's own stop < the grace before SIGKILL."""

LONGEST_REQUEST_S = 60  # the reference service's /cms?delay_ms ceiling (service.app.MAX_DELAY_MS)
TIMEOUT_SERVER_S = 65  # haproxy.cfg `timeout server`
DRAIN_TIMEOUT_S = 70  # the agent's --drain-timeout; HAProxy's `hard-stop-after` after a reload
APP_STOP_TIMEOUT_S = 25  # the agent's --stop-timeout: the app's own stop, after the drain
APP_SHUTDOWN_S = 20  # the service's SERVICE_SHUTDOWN_TIMEOUT_S, inside the app's stop
GRACE_S = 100  # supervisor's stopwaitsecs, compose's and Swarm's stop_grace_period: then SIGKILL
