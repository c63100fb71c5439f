"""The long-running and etcd-facing commands: ``run``, ``snapshot``, ``demo``."""
from __future__ import annotations


def add_commands(sub, add_source_args, add_node_args) -> None:
    """Register the agent's subcommands on the main parser."""
