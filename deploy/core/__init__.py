"""The deploy rules, free of I/O: they act through an engine, read HAProxy through a door and
tell time through a clock, so unit tests drive them on virtual time with fakes of all three."""
