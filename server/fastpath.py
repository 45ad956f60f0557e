"""The read fast path: the frames of one read run straight from its bytes.

This module is written in Cython's pure-Python mode. `pip install` compiles it to a C
extension when a C compiler is there (setup.py; the build is optional), and Python imports
the compiled module ahead of this file. Without a compiler the very same source runs
interpreted: one loop, two speeds, no second copy to keep alike. `COMPILED` says which one
this module is; the server's config key `fast_path` picks one (`load()`), logged at start
and exported as the `tickwire_build_info` metric. ``fast_path = "interpreted"`` runs the
source even where the compiled one exists (for debugging, and for the tests that run both).

Why compiled: the interpreter's own work per frame (header checks, lookups and reply
framing, dispatched as bytecode) was the whole gap between the server and the minimal
baseline (docs/bench.md, "Figures behind the server's design"); compiled, those become C,
and what is left per frame is the protobuf parse, the handler and the serialization that
any Python server pays.

Rules (see server/dispatch.py for the pool it is part of):

- It applies only where Dispatcher.submit would run the read inline anyway: the
  connection is idle (nothing queued or awaited, writes not paused, not closed, no framing
  error), the decoder holds no partial frame, and even a read of nothing but empty frames
  would stay under `mailbox_limit` and `max_pending`.
- It runs only the common frame: a fused route (sync, default layers only), no flags, a
  request that parses. It stops before anything else (a partial or out-of-range frame, a
  frame to refuse, one that does not parse, an awaited or composed route, writes paused
  or the connection closed mid-read) and returns how many bytes it used; the decoder and
  Dispatcher.submit take the rest, in order, from there.
- Per frame it does what Dispatcher.run_connection does for a fused route, with the same
  Context reuse and reply framing; tests/integration/test_fast_paths.py sends the same
  requests through both, with this module compiled and interpreted.
- Its replies wait in `conn.out` for the Outbox's flush at the end of the loop iteration
  (server/outbox.py; one call per read that produced output), or are written every
  FLUSH_BYTES.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
from sys import getrefcount
from types import ModuleType
from typing import TYPE_CHECKING, Any

import cython
from google.protobuf.message import DecodeError

from protocol.frame import HEADER, HEADER_SIZE, MIN_LENGTH, Flags
from server.app import Context
from server.middleware import SYNC_FAILURES, handler_failed

if TYPE_CHECKING:
    from server.connection import Connection
    from server.dispatch import Dispatcher

#: True in the C extension, False when this file runs interpreted.
COMPILED: bool = cython.compiled

#: Replies gathered for one connection are written once they reach this size (here and in
#: Dispatcher.run_connection), so a pause_writing can take effect in a long run of frames.
FLUSH_BYTES = 256 * 1024

_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from
# C constants when compiled (plain ints interpreted): compared with C integers in the
# loop, a Python object would be boxed and compared on every frame.
_HEADER_SIZE = cython.declare(cython.Py_ssize_t, HEADER_SIZE)
_MIN_LENGTH = cython.declare(cython.Py_ssize_t, MIN_LENGTH)
_FLUSH_BYTES = cython.declare(cython.Py_ssize_t, FLUSH_BYTES)
_RESPONSE = cython.declare(cython.int, Flags.RESPONSE)


class _Holder:
    __slots__ = ("ctx",)
    ctx: object


def _calibrate_unkept() -> int:
    """What getrefcount reports for an object held only by an attribute and a local, the
    way run_read and Dispatcher.run_connection hold a Context. Measured, not assumed: the
    answer differs between this module compiled and interpreted, and between interpreter
    versions (newer ones borrow references on the stack and report fewer)."""
    holder = _Holder()
    holder.ctx = object()
    ctx = holder.ctx
    return getrefcount(ctx)


#: The refcount of a reused Context nobody kept; anything above means a handler kept it.
UNKEPT: int = _calibrate_unkept()


def run_read(dispatcher: Dispatcher, conn: Connection, data: bytes) -> int:
    """Run the frames of `data` that the fast path can run; return the bytes used.

    Within one read it keeps in locals what stays put from frame to frame (the Context,
    the route's callables and its learned reply type, the calls it counts), so a run of
    frames of one message type touches no attribute but the Context's seq and the
    connection's two flags per frame; the calls are added to `route.calls` when the
    message type changes and at the end of the read.
    """
    size: cython.Py_ssize_t = len(data)
    if (
        conn.scheduled
        or conn.mailbox
        or conn.write_paused
        or conn.closing
        or conn.fatal is not None
        or conn.decoder.buffered
        or size // _HEADER_SIZE >= dispatcher.mailbox_limit
        or dispatcher.pending + size // _HEADER_SIZE > dispatcher.max_pending
    ):
        return 0
    pos: cython.Py_ssize_t = 0
    end: cython.Py_ssize_t
    count: cython.Py_ssize_t = 0
    out_bytes: cython.Py_ssize_t = 0
    body_size: cython.Py_ssize_t
    length: cython.Py_ssize_t
    msg_id: cython.int
    flags: cython.int
    seq: cython.longlong
    max_frame: cython.Py_ssize_t = conn.decoder.max_frame
    max_body: cython.Py_ssize_t = dispatcher.max_body
    unkept: cython.Py_ssize_t = UNKEPT
    out: list[bytes] = conn.out
    get_route = dispatcher.routes.get
    # The route of the frames being run, and its parts (see the docstring).
    route_id: cython.int = -1
    route: Any = None
    parse: Any = None
    handler: Any = None
    reply_type: Any = None
    reply_id: Any = None
    calls: cython.Py_ssize_t = 0
    # The Context, and the msg_id it was last given here (-1: not given in this read).
    ctx: Any = conn.ctx
    ctx_id: cython.int = -1
    while size - pos >= _HEADER_SIZE:
        if cython.compiled:
            # The header, read in C: no struct call, no tuple.
            length = (
                (cython.cast(cython.Py_ssize_t, data[pos]) << 24)
                | (data[pos + 1] << 16)
                | (data[pos + 2] << 8)
                | data[pos + 3]
            )
            msg_id = (data[pos + 4] << 8) | data[pos + 5]
            flags = data[pos + 6]
            seq = (
                (cython.cast(cython.longlong, data[pos + 7]) << 24)
                | (data[pos + 8] << 16)
                | (data[pos + 9] << 8)
                | data[pos + 10]
            )
        else:
            length, msg_id, flags, seq = _unpack_header(data, pos)
        end = pos + 4 + length
        # Every flag bit is refused on a request (docs/protocol.md, "Flags on incoming
        # frames"), so any flag at all leaves the frame to run_connection, which answers it.
        if length > max_frame or length < _MIN_LENGTH or end > size or flags:
            break
        if msg_id != route_id:
            found = get_route(msg_id)
            # A reply_first route is left to run_connection (Dispatcher._reply_first).
            if found is None or not found.fused or found.reply_first:
                break
            if calls:
                route.calls += calls
                calls = 0
            route = found
            route_id = msg_id
            parse = route.parse
            handler = route.handler
            reply_type = route.reply_type
            reply_id = route.reply_id
        if conn.write_paused or conn.closing:
            break
        try:
            msg = parse(data[pos + _HEADER_SIZE : end])
        except DecodeError:
            break  # run_connection answers it, from the decoder's tuple
        pos = end
        count += 1
        if ctx is None:
            ctx = conn.ctx = Context(conn, msg_id, 0, seq)
            ctx_id = msg_id
        else:
            if ctx_id != msg_id:
                ctx.msg_id = msg_id
                ctx.flags = 0
                ctx_id = msg_id
            ctx.seq = seq
        reply: Any
        calls += 1
        try:
            reply = handler(ctx, msg)
        except SYNC_FAILURES as exc:
            reply = handler_failed(route, exc)
        if getrefcount(ctx) > unkept:
            # The handler kept it: the next frame gets a Context of its own.
            conn.ctx = ctx = None
        if type(reply) is reply_type and seq:
            try:
                body = reply.SerializeToString()
            except Exception:  # a proto2 reply missing a required field, say
                out.append(dispatcher.unencodable(route, seq))
                continue
            body_size = len(body)
            if body_size > max_body:
                out.append(dispatcher.oversized(route, seq, body_size))
                continue
            out_bytes += body_size
            out.append(_pack_header(_MIN_LENGTH + body_size, reply_id, _RESPONSE, seq))
            out.append(body)
        elif reply is not None:
            frame = dispatcher.encode_reply(reply, seq, route)
            # encode_reply may have learned the route's usual reply type just now.
            reply_type = route.reply_type
            reply_id = route.reply_id
            if frame is None:
                continue
            out.append(frame)
            out_bytes += len(frame)
        else:
            continue
        if out_bytes >= _FLUSH_BYTES:
            conn.flush()
            out_bytes = 0
    if calls:
        route.calls += calls
    conn.stats.frames_in += count
    # Every frame run here ran a public handler (only fused, so ungated, routes run
    # here): each one counts against the auth timeout.
    conn.frames += count
    if out and not conn.flush_pending:
        # Written once this loop iteration's reads are done, not now (server/outbox.py).
        dispatcher.outbox.mark(conn)
    return int(pos)


def load_pure() -> ModuleType:
    """This module interpreted, from its source, whether or not the C extension exists."""
    name = __name__ + "_pure"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, SOURCE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def is_stale(compiled: str, *inputs: str) -> bool:
    """True when the compiled module is older than one of the files it was built from:
    Python would import it ahead of the edited source, and run code that is no longer
    there (or that was built with other settings). A missing file counts as not newer."""
    try:
        built = os.path.getmtime(compiled)
    except OSError:
        return False
    for path in inputs:
        with contextlib.suppress(OSError):
            if os.path.getmtime(path) > built:
                return True
    return False


#: This file's source, beside the compiled module (or this very file, interpreted).
SOURCE = os.path.join(os.path.dirname(__file__), "fastpath.py")
#: setup.py of the checkout this package sits in; absent from an installed package.
SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")


def built_fresh() -> bool:
    """True when this is the compiled module and, in a source checkout (an editable
    install, where sources get edited), it is not older than fastpath.py or setup.py:
    what `make` asks before it rebuilds (a stale build is never used, see load).

    File times are compared only in a checkout. An installed package's .so and .py come
    from one wheel, and pip does not keep the wheel's file times: it unpacks the .so
    first, so it would always look a moment older than its source."""
    if not COMPILED:
        return False
    return not (os.path.exists(SETUP) and is_stale(__file__, SOURCE, SETUP))


def load(build: str = "auto") -> ModuleType:
    """The fast path for config `fast_path`: "auto" is the compiled module where it was
    built (else this source), "interpreted" is always this source. A compiled module
    older than its source is not used (`make` rebuilds it)."""
    if build == "interpreted":
        return load_pure()
    if COMPILED and not built_fresh():
        logging.getLogger("tickwire.fastpath").warning(
            "the compiled fast path %s is older than %s or %s, so it is not used; "
            "`make run` or `make test` rebuilds it",
            __file__,
            SOURCE,
            SETUP,
        )
        return load_pure()
    return sys.modules[__name__]
