"""The `tickwire` command: serve, bench, ids, proto generation."""
