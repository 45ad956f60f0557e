"""The message registry: wire ID <-> protobuf class <-> full name.

IDs are declared in the .proto files with the ``(tickwire.msg_id)`` message option, so a
client in any language reads the same table from the schema. The registry refuses, when it
is built (at startup), anything that would make an ID ambiguous: two messages with one ID,
two classes with one full name, an application message in the protocol's reserved range.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.message import DecodeError, Message

from protocol.errors import ErrorCode, RegistryError, RemoteProtocolError
from protocol.frame import MAX_MSG_ID
from protocol.proto import options_pb2, system_pb2

if TYPE_CHECKING:
    # types-protobuf types `Message.DESCRIPTOR` as this union with the upb backend's classes.
    from google._upb._message import Descriptor as UpbDescriptor
    from google._upb._message import FileDescriptor as UpbFileDescriptor

#: IDs 1..LAST_RESERVED_ID belong to the protocol's own messages (package `system`).
LAST_RESERVED_ID = 255
SYSTEM_PACKAGE = "system"

MessageClass = type[Message]


#: Typed Any because the generated .pyi declares the extension a plain FieldDescriptor,
#: which types-protobuf's typed ``Extensions``/``HasExtension`` refuse; the runtime takes it.
_MSG_ID_OPTION: Any = options_pb2.msg_id


def declared_id(descriptor: Descriptor | UpbDescriptor) -> int | None:
    """The ``(tickwire.msg_id)`` option of a message, or None when it declares none."""
    options = descriptor.GetOptions()
    if not options.HasExtension(_MSG_ID_OPTION):
        return None
    return int(options.Extensions[_MSG_ID_OPTION])


class MessageRegistry:
    __slots__ = ("_by_id", "_by_name", "_id_by_class")

    def __init__(self) -> None:
        self._by_id: dict[int, MessageClass] = {}
        self._by_name: dict[str, MessageClass] = {}
        self._id_by_class: dict[MessageClass, int] = {}

    # -- building -------------------------------------------------------------------

    def register(self, cls: MessageClass, msg_id: int | None = None) -> int:
        """Register one message class under its declared ID (or `msg_id` when given)."""
        descriptor = cls.DESCRIPTOR
        full_name = descriptor.full_name
        if msg_id is None:
            msg_id = declared_id(descriptor)
            if msg_id is None:
                raise RegistryError(f"{full_name} declares no (tickwire.msg_id) option")
        if not 1 <= msg_id <= MAX_MSG_ID:
            raise RegistryError(f"{full_name}: message id {msg_id} is outside 1-{MAX_MSG_ID}")
        in_system = descriptor.file.package == SYSTEM_PACKAGE
        if msg_id <= LAST_RESERVED_ID and not in_system:
            raise RegistryError(
                f"{full_name}: message id {msg_id} is in the protocol's reserved range "
                f"1-{LAST_RESERVED_ID}; applications use {LAST_RESERVED_ID + 1}-{MAX_MSG_ID}"
            )
        existing = self._by_id.get(msg_id)
        if existing is not None:
            if existing is cls:
                return msg_id
            raise RegistryError(
                f"message id {msg_id} is declared by both {existing.DESCRIPTOR.full_name} "
                f"and {full_name}"
            )
        named = self._by_name.get(full_name)
        if named is not None:
            raise RegistryError(
                f"message name {full_name} is registered twice: as id {self._id_by_class[named]} "
                f"and as id {msg_id}"
            )
        self._by_id[msg_id] = cls
        self._by_name[full_name] = cls
        self._id_by_class[cls] = msg_id
        return msg_id

    def register_module(self, module: ModuleType) -> list[MessageClass]:
        """Register every top-level message of a generated ``_pb2`` module that declares an ID.

        Messages without the option (helpers such as ``system.MessageId``) are skipped.
        """
        return self.register_file(module.DESCRIPTOR)

    def register_file(self, file: FileDescriptor | UpbFileDescriptor) -> list[MessageClass]:
        """Register every top-level message of a .proto file that declares an ID.

        A handler's request type brings its whole file, so the replies declared beside
        it are known without being listed one by one.
        """
        registered = []
        for descriptor in file.message_types_by_name.values():
            if declared_id(descriptor) is not None:
                cls = message_factory.GetMessageClass(descriptor)  # type: ignore[arg-type]
                self.register(cls)
                registered.append(cls)
        return registered

    # -- lookups (hot path: plain dict access) ----------------------------------------

    def class_of(self, msg_id: int) -> MessageClass | None:
        return self._by_id.get(msg_id)

    def id_of(self, message: Message | MessageClass) -> int:
        cls = message if isinstance(message, type) else type(message)
        try:
            return self._id_by_class[cls]
        except KeyError:
            raise RegistryError(
                f"{cls.DESCRIPTOR.full_name} is not registered in this registry"
            ) from None

    def by_name(self, full_name: str) -> MessageClass:
        try:
            return self._by_name[full_name]
        except KeyError:
            raise RegistryError(f"no message named {full_name!r} is registered") from None

    def new(self, full_name: str, **fields: Any) -> Message:
        """Create a message by full name: ``registry.new("system.EchoRequest", data=b"x")``."""
        return self.by_name(full_name)(**fields)

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[tuple[int, MessageClass]]:
        return iter(sorted(self._by_id.items()))

    # -- codec ------------------------------------------------------------------------

    def decode(self, msg_id: int, payload: bytes) -> Message:
        """Parse a payload; peer mistakes raise RemoteProtocolError with the wire code."""
        cls = self._by_id.get(msg_id)
        if cls is None:
            raise RemoteProtocolError(
                ErrorCode.UNKNOWN_MESSAGE, f"message id {msg_id} is not registered"
            )
        try:
            return cls.FromString(payload)
        except DecodeError:
            raise RemoteProtocolError(
                ErrorCode.DECODE_ERROR,
                f"payload of {len(payload)} bytes is not a valid {cls.DESCRIPTOR.full_name}",
            ) from None

    def encode(self, message: Message) -> tuple[int, bytes]:
        return self.id_of(message), message.SerializeToString()

    # -- schema -----------------------------------------------------------------------

    def table(self) -> dict[int, str]:
        """The ID table: id -> full name, sorted by id."""
        return {i: cls.DESCRIPTOR.full_name for i, cls in sorted(self._by_id.items())}

    def file_descriptor_set(self) -> descriptor_pb2.FileDescriptorSet:
        """Every file that defines a registered message, dependencies first."""
        fds = descriptor_pb2.FileDescriptorSet()
        seen: set[str] = set()

        def add(file: FileDescriptor | UpbFileDescriptor) -> None:
            if file.name in seen:
                return
            seen.add(file.name)
            for dep in file.dependencies:
                add(dep)
            file.CopyToProto(fds.file.add())

        for _, cls in sorted(self._by_id.items()):
            add(cls.DESCRIPTOR.file)
        return fds

    def describe(self) -> system_pb2.DescribeReply:
        reply = system_pb2.DescribeReply(
            file_descriptor_set=self.file_descriptor_set().SerializeToString()
        )
        for msg_id, name in self.table().items():
            reply.ids.add(id=msg_id, full_name=name)
        return reply

    @classmethod
    def from_describe(cls, reply: system_pb2.DescribeReply) -> MessageRegistry:
        """A registry of dynamic classes built from a server's DescribeReply.

        The client needs no generated code: the schema and the ID table both come over
        the wire. Classes live in a private pool, so they never clash with local ones.
        """
        fds = descriptor_pb2.FileDescriptorSet.FromString(reply.file_descriptor_set)
        pool = descriptor_pool.DescriptorPool()
        for file_proto in fds.file:
            pool.Add(file_proto)
        registry = cls()
        for entry in reply.ids:
            descriptor = pool.FindMessageTypeByName(entry.full_name)
            registry._add_trusted(message_factory.GetMessageClass(descriptor), entry.id)
        return registry

    def _add_trusted(self, message_cls: MessageClass, msg_id: int) -> None:
        """Register without the range rules: the table came from a server that applied them."""
        existing = self._by_id.get(msg_id)
        if existing is not None and existing is not message_cls:
            raise RegistryError(
                f"message id {msg_id} is declared by both {existing.DESCRIPTOR.full_name} "
                f"and {message_cls.DESCRIPTOR.full_name}"
            )
        name = message_cls.DESCRIPTOR.full_name
        self._by_id[msg_id] = message_cls
        self._by_name[name] = message_cls
        self._id_by_class[message_cls] = msg_id


def system_registry(modules: Iterable[ModuleType] = ()) -> MessageRegistry:
    """A registry holding the protocol's own messages plus those of `modules`."""
    registry = MessageRegistry()
    registry.register_module(system_pb2)
    for module in modules:
        registry.register_module(module)
    return registry
