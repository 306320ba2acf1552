"""clipgan command line: the one entry point that reaches both backends."""
