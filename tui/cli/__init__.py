"""The command line: `tunedeck` and its subcommands (entry point: tui.cli.main:main)."""
