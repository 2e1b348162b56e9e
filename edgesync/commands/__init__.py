"""Subcommands of the ``edgesync`` CLI (imported lazily by ``edgesync.cli``)."""
