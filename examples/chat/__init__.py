"""The example chat service (`service.app`), served by `tickwire serve` by default."""
