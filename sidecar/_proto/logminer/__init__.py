"""Generated code for the logminer protos."""
