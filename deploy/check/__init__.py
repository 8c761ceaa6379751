"""Checking a deploy from outside: strict load, exactly-once ledgers, the report and timeline."""
