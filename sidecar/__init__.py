"""LogMiner Sidecar: redact, template, score and forward log records on the node."""

__version__ = "0.1.0"
