"""Subcommands of the ``iga`` command line, one module each."""
