"""QA scenarios from production behaviour: ``logminer scenarios``.

Sanitized sessions (raw logs through the sidecar's own redaction and mining, or key
sequences) are judged by a model bundle; their common flows and the anomalous flows the
model flags become Gherkin features, optionally JSON, with a pytest-bdd skeleton.
"""
