"""Generated code for package logminer.v1 (proto/logminer/v1)."""
