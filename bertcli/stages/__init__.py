"""Stages: each reads its input artifact, writes its output artifact and returns the manifest."""
