"""Example services shipped with tickwire: `examples.chat` is what `tickwire serve` runs
by default."""
