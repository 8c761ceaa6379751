"""How rollout replaces instances: rolling restart, or blue/green behind a map switch."""
