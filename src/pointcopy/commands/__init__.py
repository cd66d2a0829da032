"""One module per `pointcopy` command (see pointcopy.cli.COMMANDS)."""
