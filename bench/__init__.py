"""Load generators and baselines for `tickwire bench`.

The bench lives apart from the server so that it measures the server the way a client
sees it: over real sockets, from other processes, with the wire format of docs/protocol.md
as the only thing the two share. The exception is bench/serverside/: the parts that run
inside a server (the fan-out bench's app) or write its formats (session snapshots, users
files), the one package here that imports `server`.
"""
