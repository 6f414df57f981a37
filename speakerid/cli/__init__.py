"""Command-line entry points that ship with the package, so an installed speakerid has them too
(`python -m speakerid.cli.evaluate ...`)."""
