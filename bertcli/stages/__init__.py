"""Stages: each `run(cfg) -> manifest` reads a corpus or the artifact of a stage before it and writes one artifact;
pipeline.py chains them for `bert run` through the registry in schemas.py. No stage imports another."""
