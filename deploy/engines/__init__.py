"""How rollout runs a stack: local processes under supervisor, or docker compose."""
