"""Read-only commands: they read a model or an artifact and write no artifact."""
