"""Load generators and baselines for `tickwire bench`.

The bench lives apart from the server so that it measures the server the way a client
sees it: over real sockets, from other processes, with the wire format of PROTOCOL.md as
the only thing the two share.
"""
