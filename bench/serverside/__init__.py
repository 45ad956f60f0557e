"""The bench's server-side parts: the only bench modules that import `server`.

The rest of bench/ shares nothing with the server but the wire format (and `protocol`,
which does no I/O): it measures the server from outside, as a client would. What must
run inside a server, or build state in the server's own formats, lives here:

- `fanout_app`: the application `tickwire bench fanout` serves (one room, broadcasts on
  demand, the server's fan-out histogram);
- `snapshot`: a memory-store snapshot of N disconnected sessions, made with the server's
  own `SessionManager` (`tickwire bench restore`);
- `users`: a users file with the server's password hashes (`bench login`, `bench fanout`);
- `config`: the server's config defaults a bench reports or depends on.
"""
