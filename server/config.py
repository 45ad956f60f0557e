"""The server's typed configuration: one flat msgspec Struct with defaults (as uvicorn's Config).

Three sources, later ones winning: a TOML file, ``TICKWIRE_*`` environment variables
(``TICKWIRE_MAX_FRAME=65536`` sets ``max_frame``), then command-line flags. An unknown key,
a wrong type or an out-of-range value fails at start with the key's path (and the variable
or file it came from) and the expected type, never later at run time.

Each field's description lives in its ``Meta(description=...)``, so `tickwire config
--example` prints a commented file that cannot drift from the code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

import msgspec
from msgspec import Meta

from protocol.frame import DEFAULT_MAX_FRAME, MIN_LENGTH

ENV_PREFIX = "TICKWIRE_"

#: redis_url's default: a Redis on this host.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


#: Every duration has an upper bound: besides catching typos, it keeps `inf` (which
#: TOML and float() both accept) out of the tick arithmetic of the sweep.
def _doc(text: str, **constraints: Any) -> Meta:
    return Meta(description=text, **constraints)


class ServerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: Annotated[str, _doc("Address to listen on.")] = "127.0.0.1"
    port: Annotated[int, _doc("Port to listen on; 0 lets the OS pick one.", ge=0, le=65535)] = 7000
    tls_cert: Annotated[
        str,
        _doc(
            "PEM certificate chain to serve TLS with (with tls_key); empty: plaintext. "
            "One port speaks one or the other, never both."
        ),
    ] = ""
    tls_key: Annotated[str, _doc("PEM private key of tls_cert, unencrypted.")] = ""
    tls_ca: Annotated[
        str,
        _doc(
            "PEM CA certificates: with it, every client must present a certificate one of "
            "them signed (mutual TLS). Empty: no client certificate asked for."
        ),
    ] = ""
    tls_min_version: Annotated[
        Literal["1.2", "1.3"], _doc("Oldest TLS version a client may use.")
    ] = "1.2"
    tls_handshake_timeout: Annotated[
        float,
        _doc(
            "Seconds a new TLS connection has to finish its handshake before it is closed; "
            "until then it is not a connection yet (no auth or idle timeout applies).",
            gt=0,
            le=600,
        ),
    ] = 5.0
    max_frame: Annotated[
        int,
        _doc(
            'Largest `length` a frame may announce (docs/protocol.md, "Frame"); above it '
            "the peer gets FRAME_TOO_LARGE and is closed.",
            ge=MIN_LENGTH,
            le=0xFFFFFFFF,
        ),
    ] = DEFAULT_MAX_FRAME
    consumers: Annotated[
        int,
        _doc(
            "Long-lived consumer tasks that await async and blocking handlers: at most this "
            "many handlers are awaited at once.",
            ge=1,
            le=100_000,
        ),
    ] = 64
    blocking_threads: Annotated[
        int, _doc("Threads for handlers declared blocking=True.", ge=1, le=1024)
    ] = 16
    fast_path: Annotated[
        Literal["auto", "interpreted"],
        _doc(
            "Build of the read fast path (server/fastpath.py): auto takes the compiled one "
            "where the install built it, interpreted runs the same source in Python."
        ),
    ] = "auto"
    mailbox_limit: Annotated[
        int,
        _doc("Frames queued on one connection before the server stops reading it.", ge=1),
    ] = 512
    max_pending: Annotated[
        int,
        _doc("Frames queued across the server before new ones are answered OVERLOADED.", ge=1),
    ] = 200_000
    max_input_bytes: Annotated[
        int,
        _doc(
            "Bytes of input one logged-in connection may make the server hold (queued "
            "payloads plus a partial frame); reading pauses there, and frames past it are "
            "answered OVERLOADED. Never below max_frame.",
            ge=1,
        ),
    ] = 2 * 1024 * 1024
    max_input_bytes_total: Annotated[
        int,
        _doc(
            "Bytes of input queued across the server (every connection's queued payloads "
            "and partial frames); past it new frames are answered OVERLOADED and reads "
            "that grow a partial frame pause.",
            ge=1,
        ),
    ] = 128 * 1024 * 1024
    max_output_bytes_total: Annotated[
        int,
        _doc(
            "Bytes waiting for write-paused connections across the server; the connection "
            "that passes it is cut off (SLOW_CONSUMER).",
            ge=1,
        ),
    ] = 256 * 1024 * 1024
    prelogin_max_frame: Annotated[
        int,
        _doc(
            "Largest frame a connection without a session may send (max_frame once logged "
            "in); above it FRAME_TOO_LARGE and close.",
            ge=1024,
            le=0xFFFFFFFF,
        ),
    ] = 16 * 1024
    prelogin_input_bytes: Annotated[
        int,
        _doc(
            "max_input_bytes for a connection without a session (never below prelogin_max_frame).",
            ge=1,
        ),
    ] = 64 * 1024
    prelogin_output_bytes: Annotated[
        int,
        _doc(
            "slow_consumer_bytes for a connection without a session: what its replies "
            "(Describe, Echo...) may leave unread before it is cut off (SLOW_CONSUMER).",
            ge=1,
        ),
    ] = 512 * 1024
    max_connections: Annotated[
        int,
        _doc(
            "Connections the server holds; one more gets TOO_MANY_CONNECTIONS (Redis "
            "maxclients). 0: derived from the open-file limit, less 128 kept for the server "
            "itself; a number above that is lowered to it at start.",
            ge=0,
        ),
    ] = 0
    max_connections_per_ip: Annotated[
        int,
        _doc(
            "Connections from one IP address; one more gets TOO_MANY_CONNECTIONS (nginx "
            "limit_conn). Players behind one NAT share an address, hence the generous "
            "default. 0: no limit. Loopback peers are not counted while trust_loopback is on.",
            ge=0,
        ),
    ] = 256
    idle_timeout: Annotated[
        float,
        _doc(
            "Close a connection that sent no whole frame for this many seconds (Redis "
            "timeout); an SDK client answering server Pings is never idle. 0 disables.",
            ge=0,
            le=31_536_000,
        ),
    ] = 300.0
    handler_timeout: Annotated[
        float,
        _doc(
            "Seconds an async or blocking handler may run before its request gets TIMEOUT; "
            "0 disables.",
            ge=0,
            le=31_536_000,
        ),
    ] = 30.0
    max_stateful_rooms: Annotated[
        int,
        _doc(
            "Authoritative rooms one server runs at once (server/stateful_rooms.py); "
            "creating one more is refused with OVERLOADED.",
            ge=1,
            le=10_000_000,
        ),
    ] = 10_000
    idempotency_ttl: Annotated[
        float,
        _doc(
            "Seconds the store keeps an idempotent request's reply for resends of its key "
            "(a handler's idempotent_ttl overrides it); a peer can make the store hold its "
            "request rate times this many keys.",
            gt=0,
            le=31_536_000,
        ),
    ] = 3600.0
    login_threads: Annotated[
        int,
        _doc(
            "Threads that check passwords for the users_file authenticator (scrypt); "
            "0: one per CPU, at most 8.",
            ge=0,
            le=256,
        ),
    ] = 0
    login_queue: Annotated[
        int,
        _doc(
            "Password checks that may wait for a login thread (kept under consumers "
            "minus login_threads minus 8, so logins cannot hold every consumer); one more "
            "is answered OVERLOADED with the time to retry, at once.",
            ge=0,
            le=100_000,
        ),
    ] = 48
    login_user_failures: Annotated[
        int,
        _doc(
            "Failed logins in a row for one user name before its logins are refused "
            "RATE_LIMITED (without checking the password) for login_lockout seconds, "
            "doubling with each further failure; a success resets it. 0: no per-name limit.",
            ge=0,
        ),
    ] = 5
    login_address_failures: Annotated[
        int,
        _doc(
            "The same, per client address (many users may share one behind NAT). "
            "0: no per-address limit.",
            ge=0,
        ),
    ] = 50
    login_lockout: Annotated[
        float,
        _doc(
            "Seconds of the first login lockout; 0 disables login throttling.",
            ge=0,
            le=86_400,
        ),
    ] = 1.0
    login_lockout_max: Annotated[
        float,
        _doc("Longest login lockout, in seconds.", gt=0, le=86_400),
    ] = 300.0
    conn_rate: Annotated[
        str,
        _doc(
            "Requests per connection over all message types, as N/s, N/m or N/h "
            "(nginx limit_req rate); past conn_burst they get RATE_LIMITED. Empty: no limit.",
            pattern=r"^$|^\s*[0-9]+(\.[0-9]+)?\s*/\s*(s|sec|m|min|h|hour)\s*$",
        ),
    ] = ""
    conn_burst: Annotated[
        int,
        _doc("Requests a connection may send at once above conn_rate (nginx burst).", ge=1),
    ] = 100
    slow_consumer_bytes: Annotated[
        int,
        _doc(
            "Bytes waiting for one logged-in connection (its send buffer, plus pushes held "
            "while it reads nothing) before it is cut off (SLOW_CONSUMER).",
            ge=1,
        ),
    ] = 4 * 1024 * 1024
    slow_consumer_timeout: Annotated[
        float,
        _doc(
            "Seconds a peer may leave what we sent unread before it is cut off "
            "(SLOW_CONSUMER), even under slow_consumer_bytes.",
            gt=0,
            le=86_400,
        ),
    ] = 30.0
    latest_queue_bytes: Annotated[
        int,
        _doc(
            "Bytes already queued for a logged-in connection (the transport's buffer, the "
            "kernel's unsent bytes) above which latest-value pushes stop entering its queue "
            "and wait, one per key, a newer value replacing the older. Also the kernel's "
            "unsent-bytes cap (TCP_NOTSENT_LOWAT) on such connections when the app declares "
            "latest-value types. 0: latest values wait only once writes pause.",
            ge=0,
        ),
    ] = 64 * 1024
    latest_parked_bytes: Annotated[
        int,
        _doc(
            "Bytes of latest-value pushes one connection may have waiting (one per key); "
            "past it a value of a key not already waiting is dropped (the next one of that "
            "key comes when the connection catches up).",
            ge=1,
        ),
    ] = 1024 * 1024
    close_grace: Annotated[
        float,
        _doc(
            "Seconds a closing connection whose peer reads nothing keeps its socket "
            "before it is aborted.",
            gt=0,
            le=3_600,
        ),
    ] = 5.0
    sweep_interval: Annotated[
        float,
        _doc(
            "Period of the one sweep (for all connections) that applies idle_timeout, "
            "slow_consumer_timeout and close_grace; each is judged in whole periods.",
            gt=0,
            le=60,
        ),
    ] = 1.0
    drain_timeout: Annotated[
        float,
        _doc(
            "Seconds a stop (SIGTERM/SIGINT) waits for in-flight handlers and replies "
            "before it closes what is left.",
            ge=0,
            le=86_400,
        ),
    ] = 10.0
    hook_timeout: Annotated[
        float,
        _doc(
            "Seconds each async app lifecycle hook (on_start, on_stop, on_reload) may take, "
            "and that a stop or a reload waits for timer bodies still running; an on_start "
            "past it fails the start.",
            gt=0,
            le=3600,
        ),
    ] = 10.0
    max_timers: Annotated[
        int,
        _doc(
            "Timers (server.every, server.call_later, @app.every) the server holds at "
            "once; one more raises server.timers.TooManyTimers.",
            ge=1,
        ),
    ] = 100_000
    users_file: Annotated[
        str,
        _doc(
            "Users the demo authenticator accepts (NAME:scrypt$... lines, written by "
            "`tickwire users add`). Empty: no login succeeds unless the embedding code "
            "gives the Server an authenticator."
        ),
    ] = ""
    auth_timeout: Annotated[
        float,
        _doc(
            "Seconds a new connection, or one whose session ended, may go without a Login "
            "or Resume before it is closed with AUTH_TIMEOUT (NATS auth_timeout); public "
            "messages (Ping, Echo, Hello...) do not stop it unless `anonymous` says so. "
            "0: never.",
            ge=0,
            le=86_400,
        ),
    ] = 10.0
    anonymous: Annotated[
        bool,
        _doc(
            "Anonymous use: a connection that ran a public handler (Ping, Echo, an app's "
            "public=True ones) stays past auth_timeout without logging in. Off, only a "
            "login stops the auth timeout."
        ),
    ] = False
    trust_loopback: Annotated[
        bool,
        _doc(
            "Peers on a loopback address (127.0.0.0/8, ::1) are the operator's own tools "
            "(a bench, a health check): they may use public handlers past auth_timeout as "
            "with `anonymous`, and max_connections_per_ip does not count them. Turn off "
            "when a proxy on this host forwards internet peers."
        ),
    ] = True
    frame_timeout: Annotated[
        float,
        _doc(
            "Seconds a frame may take to arrive once its first byte did, before the "
            "connection is closed with IDLE_TIMEOUT (a slowloris); 0: no deadline.",
            ge=0,
            le=86_400,
        ),
    ] = 30.0
    ping_interval: Annotated[
        float,
        _doc(
            "Seconds a connection may send no whole frame before the server sends it a "
            "Ping (a PUSH, seq 0) to answer with a Pong (NATS ping_interval); 0: no "
            "server heartbeats.",
            ge=0,
            le=86_400,
        ),
    ] = 30.0
    max_outstanding_pings: Annotated[
        int,
        _doc(
            "Server Pings a connection may leave unanswered (nothing received since the "
            "first) before it is closed with IDLE_TIMEOUT (NATS ping_max).",
            ge=1,
            le=1_000,
        ),
    ] = 2
    log_flood: Annotated[
        int,
        _doc(
            "Connection open and close log lines per second before they are counted "
            "instead, and summed in one line per second; 0: a line for every connection.",
            ge=0,
        ),
    ] = 20
    session_ttl: Annotated[
        float,
        _doc(
            "Seconds a session outlives its connection: a Resume within it continues the "
            "session; after it the token is useless.",
            gt=0,
            le=30 * 86_400,
        ),
    ] = 120.0
    token_ttl: Annotated[
        float,
        _doc(
            "Seconds a session token is valid after login or its last refresh.",
            gt=0,
            le=365 * 86_400,
        ),
    ] = 86_400.0
    duplicate_login: Annotated[
        Literal["replace", "reject", "allow"],
        _doc(
            "A second login of a user already logged in: replace ends the old session "
            "(GoAway SESSION_REPLACED), reject refuses the new one while the old is "
            "connected, allow keeps both (several devices)."
        ),
    ] = "replace"
    push_buffer: Annotated[
        int,
        _doc(
            "Reliable pushes a session keeps until the client acknowledges them (replayed "
            "after a Resume); past it the oldest go and a Resume reports a gap.",
            ge=1,
            le=1_000_000,
        ),
    ] = 1024
    inbox_max: Annotated[
        int,
        _doc(
            "Offline pushes kept per user (the oldest go first); delivered at the next login.",
            ge=1,
            le=1_000_000,
        ),
    ] = 1000
    inbox_ttl: Annotated[
        float,
        _doc("Seconds an offline push is kept before it is dropped.", gt=0, le=365 * 86_400),
    ] = 7 * 86_400.0
    store: Annotated[
        Literal["auto", "memory", "redis"],
        _doc(
            "Where sessions, tokens and handlers' ctx.cache live: embedded memory, or Redis "
            'when several nodes must share them. "auto": memory, or with cluster_url the '
            "cluster's Redis (a cluster on the memory store is refused)."
        ),
    ] = "auto"
    redis_url: Annotated[
        str,
        _doc(
            'The Redis to use when store is "redis"; with cluster_url and this default, '
            "the cluster's."
        ),
    ] = DEFAULT_REDIS_URL
    cluster_url: Annotated[
        str,
        _doc(
            "Join the cluster whose bus and directory are this Redis (redis://HOST:PORT/DB; "
            "docs/scaling.md). Empty: one process on its own, as without a cluster."
        ),
    ] = ""
    node_id: Annotated[
        str,
        _doc("This node's name in the cluster; empty: <hostname>:<pid>."),
    ] = ""
    cluster_heartbeat: Annotated[
        float,
        _doc(
            "Seconds between a node's heartbeats (each writes its record and reads the others').",
            gt=0,
            le=60,
        ),
    ] = 1.0
    cluster_node_ttl: Annotated[
        float,
        _doc(
            "Seconds a node's record lives without a heartbeat: a node killed is gone from "
            "the others' view within cluster_node_ttl + cluster_heartbeat.",
            gt=0,
            le=600,
        ),
    ] = 2.0
    cluster_call_timeout: Annotated[
        float,
        _doc(
            "Seconds a node-to-node call (a forwarded owned-key request, server.call, a "
            "Resume's handover) waits for its answer by default.",
            gt=0,
            le=600,
        ),
    ] = 5.0
    processes: Annotated[
        int,
        _doc(
            "Worker processes `tickwire serve` starts on one listening port, each a node "
            "of cluster_url (more than 1 needs it).",
            ge=1,
            le=1024,
        ),
    ] = 1
    store_snapshot_path: Annotated[
        str,
        _doc(
            "memory store: file it is saved to (at an interval and on stop) and restored "
            "from at start; empty keeps nothing across restarts."
        ),
    ] = ""
    store_snapshot_interval: Annotated[
        float,
        _doc(
            "memory store: seconds between snapshots.",
            gt=0,
            le=86_400,
        ),
    ] = 60.0
    store_max_keys: Annotated[
        int, _doc("memory store: keys kept before the least recently used go; 0: no cap.", ge=0)
    ] = 0
    store_append_only: Annotated[
        bool,
        _doc(
            "memory store: also log every write beside the snapshot (<path>.aof.<n>), "
            "written and fsynced every store_append_fsync seconds, so a kill -9 loses at "
            "most that much rather than a snapshot interval (Redis' appendonly yes, "
            "appendfsync everysec). Needs store_snapshot_path."
        ),
    ] = False
    store_append_fsync: Annotated[
        float,
        _doc("memory store: seconds between append-only writes and fsyncs.", gt=0, le=60),
    ] = 1.0
    store_breaker_failures: Annotated[
        int,
        _doc(
            "Store calls in a row that find the store unreachable before the circuit "
            "breaker opens: store-backed requests then fail fast with OVERLOADED and a "
            'retry hint (docs/internet.md, "When the store fails").',
            ge=1,
            le=1000,
        ),
    ] = 3
    store_breaker_probe_interval: Annotated[
        float,
        _doc(
            "Seconds between the breaker opening (or a failed probe) and the next probe "
            "(a PING) that closes it again once the store answers.",
            gt=0,
            le=3600,
        ),
    ] = 1.0
    max_rooms_per_session: Annotated[
        int,
        _doc(
            "Rooms one session may be in at once; a join past it is refused with "
            "OVERLOADED (server.push.RoomLimit). 0: no cap.",
            ge=0,
        ),
    ] = 1000
    backlog: Annotated[int, _doc("Listen backlog.", ge=1)] = 2048
    pid_file: Annotated[
        str,
        _doc(
            "Write the serving process's pid here (`tickwire restart --pid-file` reads it); "
            "a restarted successor rewrites it once it serves. Empty: none."
        ),
    ] = ""
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], _doc("Lowest level logged.")
    ] = "info"
    log_format: Annotated[
        Literal["text", "json"],
        _doc("Log lines as readable text or as one JSON object per line."),
    ] = "text"
    metrics: Annotated[
        bool,
        _doc(
            "Serve Prometheus /metrics, /healthz and /readyz on metrics_host:metrics_port "
            "(adds per-handler latency timing)."
        ),
    ] = False
    metrics_host: Annotated[str, _doc("Address of the metrics and health endpoint.")] = "127.0.0.1"
    metrics_port: Annotated[
        int, _doc("Port of the metrics endpoint; 0 lets the OS pick one.", ge=0, le=65535)
    ] = 9170

    def __post_init__(self) -> None:
        if self.cluster_url:
            if self.store == "memory":
                raise ValueError(
                    "store = memory with cluster_url: the nodes of a cluster share sessions "
                    'through Redis (leave store at "auto" to use the cluster\'s, or set '
                    '"redis" and redis_url)'
                )
        elif self.processes > 1:
            raise ValueError(
                f"processes = {self.processes} needs cluster_url: the workers share "
                "sessions, pushes and rooms through the cluster's Redis "
                "(e.g. --cluster redis://127.0.0.1:6379/0)"
            )
        if self.cluster_url:
            from server.cluster.resp import RedisAddress

            RedisAddress.parse(self.cluster_url)

    @property
    def store_backend(self) -> Literal["memory", "redis"]:
        """The store in force: "auto" resolved."""
        if self.store == "auto":
            return "redis" if self.cluster_url else "memory"
        return self.store

    @property
    def store_url(self) -> str:
        """The Redis of a "redis" store: redis_url, or the cluster's when it is left at
        its default."""
        if self.cluster_url and self.redis_url == DEFAULT_REDIS_URL:
            return self.cluster_url
        return self.redis_url


class ConfigError(Exception):
    """A configuration value is wrong; the message names the key path and what was expected."""


_FIELDS = {f.name: f for f in msgspec.structs.fields(ServerConfig)}


def _from_file(path: str | Path) -> dict[str, Any]:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = msgspec.toml.decode(raw)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a TOML table at the top level")
    try:
        # Validate the file on its own first, so an error names the file it is in.
        msgspec.convert(data, ServerConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return data


def _coerce(key: str, text: str, source: str) -> Any:
    """A string from the environment or a --set flag, parsed as the field's type."""
    field = _FIELDS.get(key)
    if field is None:
        raise ConfigError(
            f"{source}: unknown key `{key}`; known keys: {', '.join(sorted(_FIELDS))}"
        )
    try:
        return msgspec.convert(text, field.type, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}={text!r}: {exc} (key `$.{key}`)") from None


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    return {
        name[len(ENV_PREFIX) :].lower(): _coerce(name[len(ENV_PREFIX) :].lower(), text, name)
        for name, text in env.items()
        if name.startswith(ENV_PREFIX)
    }


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` flags, typed like environment values."""
    data: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        data[key.strip()] = _coerce(key.strip(), text, f"--set {key.strip()}")
    return data


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> ServerConfig:
    """The effective config: defaults < TOML file < TICKWIRE_* environment < `overrides`
    (command-line flags; None means "not given")."""
    data: dict[str, Any] = {}
    if path is not None:
        data.update(_from_file(path))
    data.update(_from_env(os.environ if env is None else env))
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(data, ServerConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return msgspec.json.encode(value).decode()
    return repr(value)


def _description(annotation: Any) -> str:
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, Meta) and meta.description:
            return meta.description
    return ""


def render_toml(config: ServerConfig, *, commented: bool = False) -> str:
    """The config as TOML. `commented`: every key commented out under its description,
    the way `tickwire config --example` shows the defaults."""
    hints = get_type_hints(ServerConfig, include_extras=True)
    lines: list[str] = []
    for name in _FIELDS:
        value = getattr(config, name)
        if commented:
            text = _description(hints[name])
            lines.append(f"# {text}")
            lines.append(f"# {name} = {_toml_value(value)}")
            lines.append("")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines).rstrip() + "\n"
