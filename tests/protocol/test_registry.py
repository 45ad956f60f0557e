"""The message registry against docs/protocol.md, "Message IDs".

The system IDs and fields are the contract clients in other languages are built against,
so they are checked one by one here rather than trusted to the .proto file. Application
messages with chosen IDs are built at test time in private descriptor pools: that is the
only way to get two messages declaring one ID without committing a broken schema.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from protocol.errors import ErrorCode, LocalProtocolError, RegistryError, RemoteProtocolError
from protocol.proto import options_pb2, system_pb2
from protocol.registry import MessageRegistry, declared_id, system_registry

FDP = descriptor_pb2.FieldDescriptorProto
MessageClass = type[Message]
#: Any: the generated .pyi types it a plain FieldDescriptor, which the Extensions stub refuses.
MSG_ID_OPTION: Any = options_pb2.msg_id

SYSTEM_IDS = {
    1: "system.Ping",
    2: "system.Pong",
    3: "system.Error",
    10: "system.EchoRequest",
    11: "system.EchoReply",
    20: "system.DescribeRequest",
    21: "system.DescribeReply",
    30: "system.GoAway",
}

# The "fields" column of docs/protocol.md, "Fixed IDs": name -> (number, type, repeated,
# message type or None).
SYSTEM_FIELDS: dict[str, dict[str, tuple[int, int, bool, str | None]]] = {
    "system.Ping": {"client_time_ns": (1, FDP.TYPE_INT64, False, None)},
    "system.Pong": {
        "client_time_ns": (1, FDP.TYPE_INT64, False, None),
        "server_time_ns": (2, FDP.TYPE_INT64, False, None),
    },
    "system.Error": {
        "code": (1, FDP.TYPE_UINT32, False, None),
        "message": (2, FDP.TYPE_STRING, False, None),
        "request_msg_id": (3, FDP.TYPE_UINT32, False, None),
    },
    "system.EchoRequest": {"data": (1, FDP.TYPE_BYTES, False, None)},
    "system.EchoReply": {"data": (1, FDP.TYPE_BYTES, False, None)},
    "system.DescribeRequest": {},
    "system.DescribeReply": {
        "file_descriptor_set": (1, FDP.TYPE_BYTES, False, None),
        "ids": (2, FDP.TYPE_MESSAGE, True, "system.MessageId"),
    },
    "system.MessageId": {
        "id": (1, FDP.TYPE_UINT32, False, None),
        "full_name": (2, FDP.TYPE_STRING, False, None),
    },
    "system.GoAway": {
        "reason": (1, FDP.TYPE_UINT32, False, None),
        "message": (2, FDP.TYPE_STRING, False, None),
        "reconnect_after_ms": (3, FDP.TYPE_UINT32, False, None),
    },
}


# -- app messages with chosen IDs, in private pools -----------------------------------


def _copy_file(pool: descriptor_pool.DescriptorPool, module: object) -> None:
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)  # type: ignore[attr-defined]
    pool.Add(proto)


def app_classes(
    messages: Iterable[tuple[str, int | None]], file_name: str = "testapp/app.proto"
) -> dict[str, MessageClass]:
    """Classes for ``testapp.<name>`` messages declaring the given IDs (None: no option).

    Each call gets its own pool, so two calls may define the same full name: exactly the
    conflict the registry must refuse.
    """
    pool = descriptor_pool.DescriptorPool()
    _copy_file(pool, descriptor_pb2)
    _copy_file(pool, options_pb2)
    file = descriptor_pb2.FileDescriptorProto(
        name=file_name,
        package="testapp",
        syntax="proto3",
        dependency=["protocol/proto/options.proto", "google/protobuf/descriptor.proto"],
    )
    names = []
    for name, msg_id in messages:
        msg = file.message_type.add(name=name)
        msg.field.add(name="value", number=1, type=FDP.TYPE_STRING, label=FDP.LABEL_OPTIONAL)
        if msg_id is not None:
            msg.options.Extensions[MSG_ID_OPTION] = msg_id
        names.append(name)
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"testapp.{name}"))
        for name in names
    }


def test_declared_id_reads_the_option_across_pools() -> None:
    classes = app_classes([("A", 300), ("B", 65535), ("C", None)])
    assert declared_id(classes["A"].DESCRIPTOR) == 300
    assert declared_id(classes["B"].DESCRIPTOR) == 65535
    assert declared_id(classes["C"].DESCRIPTOR) is None
    # Same schema, other pool: the ID travels with the descriptor, not with the pool.
    assert declared_id(app_classes([("A", 301)])["A"].DESCRIPTOR) == 301


def test_declared_id_of_system_messages() -> None:
    assert declared_id(system_pb2.EchoRequest.DESCRIPTOR) == 10
    assert declared_id(system_pb2.MessageId.DESCRIPTOR) is None


# -- the fixed system table -------------------------------------------------------------


def test_system_ids_are_fixed() -> None:
    registry = system_registry()
    table = registry.table()
    # Other system messages may take the free IDs of 4-255; these eight never move.
    assert {i: table.get(i) for i in SYSTEM_IDS} == SYSTEM_IDS
    assert all(i <= 255 and name.startswith("system.") for i, name in table.items())
    for msg_id, name in SYSTEM_IDS.items():
        cls = registry.class_of(msg_id)
        assert cls is getattr(system_pb2, name.removeprefix("system."))
        assert registry.id_of(cls) == msg_id
        assert registry.id_of(cls()) == msg_id
        assert registry.by_name(name) is cls
        assert msg_id in registry


def test_helper_messages_take_no_id() -> None:
    registry = system_registry()
    with pytest.raises(RegistryError):
        registry.id_of(system_pb2.MessageId)


@pytest.mark.parametrize("full_name", sorted(SYSTEM_FIELDS))
def test_system_fields_match_spec(full_name: str) -> None:
    cls = getattr(system_pb2, full_name.removeprefix("system."))
    descriptor = cls.DESCRIPTOR
    assert descriptor.full_name == full_name
    assert descriptor.file.package == "system"
    fields: dict[str, tuple[int, int, bool, str | None]] = {}
    for field in descriptor.fields:
        message_type = field.message_type.full_name if field.message_type else None
        fields[field.name] = (field.number, field.type, field.is_repeated, message_type)
    assert fields == SYSTEM_FIELDS[full_name]


def test_new_by_full_name() -> None:
    message = system_registry().new("system.EchoRequest", data=b"x")
    assert isinstance(message, system_pb2.EchoRequest)
    assert message.data == b"x"


def test_new_of_unknown_name() -> None:
    with pytest.raises(RegistryError, match=r"system\.Nope"):
        system_registry().new("system.Nope")


# -- decode errors carry the wire code ---------------------------------------------------


def test_decode_round_trip() -> None:
    registry = system_registry()
    msg_id, payload = registry.encode(system_pb2.EchoReply(data=b"hello"))
    assert msg_id == 11
    assert registry.decode(msg_id, payload) == system_pb2.EchoReply(data=b"hello")


def test_decode_unknown_id_is_unknown_message() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        system_registry().decode(9999, b"")
    assert info.value.code == ErrorCode.UNKNOWN_MESSAGE
    assert not info.value.fatal


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x0b"])
def test_decode_garbage_is_decode_error(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        system_registry().decode(10, payload)
    assert info.value.code == ErrorCode.DECODE_ERROR
    assert not info.value.fatal


# -- what register refuses ---------------------------------------------------------------


def test_duplicate_id_names_both_messages() -> None:
    classes = app_classes([("Buy", 300), ("Sell", 300)])
    registry = system_registry()
    registry.register(classes["Buy"])
    with pytest.raises(RegistryError) as info:
        registry.register(classes["Sell"])
    assert "testapp.Buy" in str(info.value)
    assert "testapp.Sell" in str(info.value)
    assert "300" in str(info.value)
    assert registry.class_of(300) is classes["Buy"]


def test_duplicate_id_with_an_explicit_id_names_both() -> None:
    registry = system_registry()
    registry.register(app_classes([("Echo", None)])["Echo"], msg_id=400)
    with pytest.raises(RegistryError) as info:
        registry.register(app_classes([("Dup", 400)])["Dup"])
    assert "testapp.Echo" in str(info.value)
    assert "testapp.Dup" in str(info.value)


def test_duplicate_system_id_names_both() -> None:
    registry = system_registry()
    with pytest.raises(RegistryError) as info:
        registry.register(system_pb2.Ping, msg_id=10)
    assert "system.EchoRequest" in str(info.value)
    assert "system.Ping" in str(info.value)
    assert registry.class_of(10) is system_pb2.EchoRequest


def test_duplicate_full_name_is_refused() -> None:
    first = app_classes([("Order", 300)])["Order"]
    second = app_classes([("Order", 301)])["Order"]
    assert first is not second
    registry = system_registry()
    registry.register(first)
    with pytest.raises(RegistryError, match=r"testapp\.Order") as info:
        registry.register(second)
    assert "300" in str(info.value) and "301" in str(info.value)
    assert 301 not in registry


@pytest.mark.parametrize("msg_id", [1, 10, 100, 255])
def test_app_message_in_reserved_range_is_refused(msg_id: int) -> None:
    cls = app_classes([("Low", msg_id)])["Low"]
    registry = MessageRegistry()
    with pytest.raises(RegistryError, match="reserved"):
        registry.register(cls)
    assert len(registry) == 0


def test_first_app_id_is_256() -> None:
    cls = app_classes([("First", 256)])["First"]
    assert MessageRegistry().register(cls) == 256


@pytest.mark.parametrize("msg_id", [0, 65536, -1])
def test_id_outside_u16_is_refused(msg_id: int) -> None:
    cls = app_classes([("Any", None)])["Any"]
    with pytest.raises(RegistryError):
        MessageRegistry().register(cls, msg_id=msg_id)


def test_message_without_id_is_refused() -> None:
    cls = app_classes([("NoId", None)])["NoId"]
    with pytest.raises(RegistryError, match="msg_id"):
        MessageRegistry().register(cls)


def test_registry_errors_are_local() -> None:
    # A bad registry is this side's bug; nothing about it may go on the wire.
    assert issubclass(RegistryError, LocalProtocolError)


def test_registering_the_same_class_twice_is_idempotent() -> None:
    cls = app_classes([("Again", 500)])["Again"]
    registry = system_registry()
    assert registry.register(cls) == 500
    before = registry.table()
    assert registry.register(cls) == 500
    registry.register_module(system_pb2)
    assert registry.table() == before
    assert len(registry) == len(before)


def test_iteration_is_sorted_by_id() -> None:
    registry = system_registry()
    classes = app_classes([("Late", 900), ("Early", 300)])
    registry.register(classes["Late"])
    registry.register(classes["Early"])
    ids = [i for i, _ in registry]
    assert ids == sorted(ids)
    assert set(SYSTEM_IDS) | {300, 900} <= set(ids)


# -- describe -> from_describe -----------------------------------------------------------

SAMPLES: dict[str, Message] = {
    "system.Ping": system_pb2.Ping(client_time_ns=-5),
    "system.Pong": system_pb2.Pong(client_time_ns=1, server_time_ns=2**62),
    "system.Error": system_pb2.Error(code=4, message="nope \u00e9", request_msg_id=65535),
    "system.EchoRequest": system_pb2.EchoRequest(data=b"\x00\xffecho"),
    "system.EchoReply": system_pb2.EchoReply(data=b"reply"),
    "system.DescribeRequest": system_pb2.DescribeRequest(),
    "system.DescribeReply": system_pb2.DescribeReply(
        file_descriptor_set=b"fds",
        ids=[system_pb2.MessageId(id=1, full_name="system.Ping")],
    ),
    "system.GoAway": system_pb2.GoAway(reason=13, message="bye", reconnect_after_ms=250),
}


def described(registry: MessageRegistry) -> MessageRegistry:
    """What a client builds: the reply goes through the wire encoding first."""
    wire = registry.describe().SerializeToString()
    return MessageRegistry.from_describe(system_pb2.DescribeReply.FromString(wire))


def test_describe_lists_the_table() -> None:
    reply = system_registry().describe()
    assert {entry.id: entry.full_name for entry in reply.ids} == system_registry().table()
    fds = descriptor_pb2.FileDescriptorSet.FromString(reply.file_descriptor_set)
    names = [f.name for f in fds.file]
    # Dependencies first, or a client's pool.Add fails on the file that needs them.
    assert names.index("google/protobuf/descriptor.proto") < names.index(
        "protocol/proto/options.proto"
    )
    assert names.index("protocol/proto/options.proto") < names.index("protocol/proto/system.proto")


def test_from_describe_table_equals_original() -> None:
    original = system_registry()
    assert described(original).table() == original.table()


def test_from_describe_classes_are_dynamic_and_private() -> None:
    client = described(system_registry())
    for msg_id, name in SYSTEM_IDS.items():
        cls = client.class_of(msg_id)
        assert cls is not None
        generated = getattr(system_pb2, name.removeprefix("system."))
        assert cls is not generated
        assert cls.DESCRIPTOR is not generated.DESCRIPTOR
        assert cls.DESCRIPTOR.file.pool is not descriptor_pool.Default()
        assert client.id_of(cls) == msg_id


@pytest.mark.parametrize("full_name", sorted(SAMPLES))
def test_from_describe_classes_are_wire_compatible(full_name: str) -> None:
    server = system_registry()
    client = described(server)
    sample = SAMPLES[full_name]
    msg_id, payload = server.encode(sample)
    # A sample left at its defaults encodes to nothing and would prove nothing.
    assert payload or not SYSTEM_FIELDS[full_name]
    # server -> client
    dynamic = client.decode(msg_id, payload)
    assert dynamic.DESCRIPTOR.full_name == full_name
    assert dynamic.SerializeToString(deterministic=True) == sample.SerializeToString(
        deterministic=True
    )
    # client -> server
    client_id, client_payload = client.encode(dynamic)
    assert client_id == msg_id
    assert server.decode(client_id, client_payload) == sample


def test_samples_cover_the_fields() -> None:
    for full_name, sample in SAMPLES.items():
        set_fields = {field.name for field, _ in sample.ListFields()}
        assert set_fields == set(SYSTEM_FIELDS[full_name]), full_name


def test_from_describe_with_app_messages() -> None:
    classes = app_classes([("Quote", 1000), ("Trade", 1001)])
    server = system_registry()
    for cls in classes.values():
        server.register(cls)
    client = described(server)
    assert client.table() == server.table()
    payload = classes["Trade"](value="AAPL").SerializeToString()
    decoded = client.decode(1001, payload)
    assert decoded.DESCRIPTOR.full_name == "testapp.Trade"
    assert client.encode(decoded) == (1001, payload)
    # The schema the client received still declares the IDs.
    assert declared_id(client.by_name("testapp.Quote").DESCRIPTOR) == 1000
