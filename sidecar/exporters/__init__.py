"""Exporters: where sanitized records go (stdout/file JSONL, downstream Fluentd, SIEM)."""
