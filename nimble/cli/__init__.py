"""Command line: `nimble serve`, `nimble settings-doc`."""
