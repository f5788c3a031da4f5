"""The `wan22` command line: one module per command; `parser` builds the argument parser without torch."""
