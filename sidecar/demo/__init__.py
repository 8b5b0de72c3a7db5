"""`logminer demo`: the sidecar end to end on bundled sample data (see run.py)."""
