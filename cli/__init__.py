"""edgefleet.cli: the `edgefleet` command. The composition root: the only package that may reach every
wing, and it imports each lazily inside the commands, so `edgefleet verify` on a device loads no torch
and no cloud code (tests/cli/test_imports.py checks it)."""
