from protocol.proto import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Side(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIDE_UNSPECIFIED: _ClassVar[Side]
    BUY: _ClassVar[Side]
    SELL: _ClassVar[Side]

class OrdType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORD_TYPE_UNSPECIFIED: _ClassVar[OrdType]
    MARKET: _ClassVar[OrdType]
    LIMIT: _ClassVar[OrdType]

class ExecType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXEC_TYPE_UNSPECIFIED: _ClassVar[ExecType]
    EXEC_NEW: _ClassVar[ExecType]
    EXEC_TRADE: _ClassVar[ExecType]
    EXEC_CANCELED: _ClassVar[ExecType]
    EXEC_REPLACED: _ClassVar[ExecType]
    EXEC_REJECTED: _ClassVar[ExecType]
    EXEC_ORDER_STATUS: _ClassVar[ExecType]

class OrdStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORD_STATUS_UNSPECIFIED: _ClassVar[OrdStatus]
    NEW: _ClassVar[OrdStatus]
    PARTIALLY_FILLED: _ClassVar[OrdStatus]
    FILLED: _ClassVar[OrdStatus]
    CANCELED: _ClassVar[OrdStatus]
    REJECTED: _ClassVar[OrdStatus]

class CxlRejResponseTo(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CXL_REJ_RESPONSE_TO_UNSPECIFIED: _ClassVar[CxlRejResponseTo]
    ORDER_CANCEL_REQUEST: _ClassVar[CxlRejResponseTo]
    ORDER_CANCEL_REPLACE_REQUEST: _ClassVar[CxlRejResponseTo]

class SubscriptionRequestType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUBSCRIPTION_REQUEST_TYPE_UNSPECIFIED: _ClassVar[SubscriptionRequestType]
    SNAPSHOT: _ClassVar[SubscriptionRequestType]
    SUBSCRIBE: _ClassVar[SubscriptionRequestType]
    UNSUBSCRIBE: _ClassVar[SubscriptionRequestType]

class MDEntryType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MD_ENTRY_TYPE_UNSPECIFIED: _ClassVar[MDEntryType]
    BID: _ClassVar[MDEntryType]
    OFFER: _ClassVar[MDEntryType]
SIDE_UNSPECIFIED: Side
BUY: Side
SELL: Side
ORD_TYPE_UNSPECIFIED: OrdType
MARKET: OrdType
LIMIT: OrdType
EXEC_TYPE_UNSPECIFIED: ExecType
EXEC_NEW: ExecType
EXEC_TRADE: ExecType
EXEC_CANCELED: ExecType
EXEC_REPLACED: ExecType
EXEC_REJECTED: ExecType
EXEC_ORDER_STATUS: ExecType
ORD_STATUS_UNSPECIFIED: OrdStatus
NEW: OrdStatus
PARTIALLY_FILLED: OrdStatus
FILLED: OrdStatus
CANCELED: OrdStatus
REJECTED: OrdStatus
CXL_REJ_RESPONSE_TO_UNSPECIFIED: CxlRejResponseTo
ORDER_CANCEL_REQUEST: CxlRejResponseTo
ORDER_CANCEL_REPLACE_REQUEST: CxlRejResponseTo
SUBSCRIPTION_REQUEST_TYPE_UNSPECIFIED: SubscriptionRequestType
SNAPSHOT: SubscriptionRequestType
SUBSCRIBE: SubscriptionRequestType
UNSUBSCRIBE: SubscriptionRequestType
MD_ENTRY_TYPE_UNSPECIFIED: MDEntryType
BID: MDEntryType
OFFER: MDEntryType

class NewOrderSingle(_message.Message):
    __slots__ = ("cl_ord_id", "symbol", "side", "ord_type", "price", "order_qty")
    CL_ORD_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    ORD_TYPE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    ORDER_QTY_FIELD_NUMBER: _ClassVar[int]
    cl_ord_id: str
    symbol: str
    side: Side
    ord_type: OrdType
    price: int
    order_qty: int
    def __init__(self, cl_ord_id: _Optional[str] = ..., symbol: _Optional[str] = ..., side: _Optional[_Union[Side, str]] = ..., ord_type: _Optional[_Union[OrdType, str]] = ..., price: _Optional[int] = ..., order_qty: _Optional[int] = ...) -> None: ...

class ExecutionReport(_message.Message):
    __slots__ = ("order_id", "cl_ord_id", "orig_cl_ord_id", "exec_id", "exec_type", "ord_status", "symbol", "side", "ord_type", "price", "order_qty", "last_qty", "last_px", "leaves_qty", "cum_qty", "trd_match_id", "text", "transact_time")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CL_ORD_ID_FIELD_NUMBER: _ClassVar[int]
    ORIG_CL_ORD_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_TYPE_FIELD_NUMBER: _ClassVar[int]
    ORD_STATUS_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    ORD_TYPE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    ORDER_QTY_FIELD_NUMBER: _ClassVar[int]
    LAST_QTY_FIELD_NUMBER: _ClassVar[int]
    LAST_PX_FIELD_NUMBER: _ClassVar[int]
    LEAVES_QTY_FIELD_NUMBER: _ClassVar[int]
    CUM_QTY_FIELD_NUMBER: _ClassVar[int]
    TRD_MATCH_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TRANSACT_TIME_FIELD_NUMBER: _ClassVar[int]
    order_id: int
    cl_ord_id: str
    orig_cl_ord_id: str
    exec_id: int
    exec_type: ExecType
    ord_status: OrdStatus
    symbol: str
    side: Side
    ord_type: OrdType
    price: int
    order_qty: int
    last_qty: int
    last_px: int
    leaves_qty: int
    cum_qty: int
    trd_match_id: int
    text: str
    transact_time: int
    def __init__(self, order_id: _Optional[int] = ..., cl_ord_id: _Optional[str] = ..., orig_cl_ord_id: _Optional[str] = ..., exec_id: _Optional[int] = ..., exec_type: _Optional[_Union[ExecType, str]] = ..., ord_status: _Optional[_Union[OrdStatus, str]] = ..., symbol: _Optional[str] = ..., side: _Optional[_Union[Side, str]] = ..., ord_type: _Optional[_Union[OrdType, str]] = ..., price: _Optional[int] = ..., order_qty: _Optional[int] = ..., last_qty: _Optional[int] = ..., last_px: _Optional[int] = ..., leaves_qty: _Optional[int] = ..., cum_qty: _Optional[int] = ..., trd_match_id: _Optional[int] = ..., text: _Optional[str] = ..., transact_time: _Optional[int] = ...) -> None: ...

class OrderCancelRequest(_message.Message):
    __slots__ = ("order_id", "cl_ord_id", "symbol", "side")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CL_ORD_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    order_id: int
    cl_ord_id: str
    symbol: str
    side: Side
    def __init__(self, order_id: _Optional[int] = ..., cl_ord_id: _Optional[str] = ..., symbol: _Optional[str] = ..., side: _Optional[_Union[Side, str]] = ...) -> None: ...

class OrderCancelReplaceRequest(_message.Message):
    __slots__ = ("order_id", "cl_ord_id", "symbol", "side", "price", "order_qty")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CL_ORD_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    ORDER_QTY_FIELD_NUMBER: _ClassVar[int]
    order_id: int
    cl_ord_id: str
    symbol: str
    side: Side
    price: int
    order_qty: int
    def __init__(self, order_id: _Optional[int] = ..., cl_ord_id: _Optional[str] = ..., symbol: _Optional[str] = ..., side: _Optional[_Union[Side, str]] = ..., price: _Optional[int] = ..., order_qty: _Optional[int] = ...) -> None: ...

class OrderCancelReject(_message.Message):
    __slots__ = ("order_id", "cl_ord_id", "orig_cl_ord_id", "ord_status", "cxl_rej_response_to", "text")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CL_ORD_ID_FIELD_NUMBER: _ClassVar[int]
    ORIG_CL_ORD_ID_FIELD_NUMBER: _ClassVar[int]
    ORD_STATUS_FIELD_NUMBER: _ClassVar[int]
    CXL_REJ_RESPONSE_TO_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    order_id: int
    cl_ord_id: str
    orig_cl_ord_id: str
    ord_status: OrdStatus
    cxl_rej_response_to: CxlRejResponseTo
    text: str
    def __init__(self, order_id: _Optional[int] = ..., cl_ord_id: _Optional[str] = ..., orig_cl_ord_id: _Optional[str] = ..., ord_status: _Optional[_Union[OrdStatus, str]] = ..., cxl_rej_response_to: _Optional[_Union[CxlRejResponseTo, str]] = ..., text: _Optional[str] = ...) -> None: ...

class MarketDataRequest(_message.Message):
    __slots__ = ("md_req_id", "symbol", "subscription_request_type", "market_depth")
    MD_REQ_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_REQUEST_TYPE_FIELD_NUMBER: _ClassVar[int]
    MARKET_DEPTH_FIELD_NUMBER: _ClassVar[int]
    md_req_id: str
    symbol: str
    subscription_request_type: SubscriptionRequestType
    market_depth: int
    def __init__(self, md_req_id: _Optional[str] = ..., symbol: _Optional[str] = ..., subscription_request_type: _Optional[_Union[SubscriptionRequestType, str]] = ..., market_depth: _Optional[int] = ...) -> None: ...

class MDEntry(_message.Message):
    __slots__ = ("md_entry_type", "md_entry_px", "md_entry_size")
    MD_ENTRY_TYPE_FIELD_NUMBER: _ClassVar[int]
    MD_ENTRY_PX_FIELD_NUMBER: _ClassVar[int]
    MD_ENTRY_SIZE_FIELD_NUMBER: _ClassVar[int]
    md_entry_type: MDEntryType
    md_entry_px: int
    md_entry_size: int
    def __init__(self, md_entry_type: _Optional[_Union[MDEntryType, str]] = ..., md_entry_px: _Optional[int] = ..., md_entry_size: _Optional[int] = ...) -> None: ...

class MarketDataSnapshotFullRefresh(_message.Message):
    __slots__ = ("md_req_id", "symbol", "market_depth", "md_entries")
    MD_REQ_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    MARKET_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MD_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    md_req_id: str
    symbol: str
    market_depth: int
    md_entries: _containers.RepeatedCompositeFieldContainer[MDEntry]
    def __init__(self, md_req_id: _Optional[str] = ..., symbol: _Optional[str] = ..., market_depth: _Optional[int] = ..., md_entries: _Optional[_Iterable[_Union[MDEntry, _Mapping]]] = ...) -> None: ...

class TradeCaptureReport(_message.Message):
    __slots__ = ("trd_match_id", "symbol", "last_px", "last_qty", "aggressor_side", "transact_time")
    TRD_MATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    LAST_PX_FIELD_NUMBER: _ClassVar[int]
    LAST_QTY_FIELD_NUMBER: _ClassVar[int]
    AGGRESSOR_SIDE_FIELD_NUMBER: _ClassVar[int]
    TRANSACT_TIME_FIELD_NUMBER: _ClassVar[int]
    trd_match_id: int
    symbol: str
    last_px: int
    last_qty: int
    aggressor_side: Side
    transact_time: int
    def __init__(self, trd_match_id: _Optional[int] = ..., symbol: _Optional[str] = ..., last_px: _Optional[int] = ..., last_qty: _Optional[int] = ..., aggressor_side: _Optional[_Union[Side, str]] = ..., transact_time: _Optional[int] = ...) -> None: ...

class RequestForPositions(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Position(_message.Message):
    __slots__ = ("symbol", "qty", "qty_held")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    QTY_FIELD_NUMBER: _ClassVar[int]
    QTY_HELD_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    qty: int
    qty_held: int
    def __init__(self, symbol: _Optional[str] = ..., qty: _Optional[int] = ..., qty_held: _Optional[int] = ...) -> None: ...

class PositionReport(_message.Message):
    __slots__ = ("account", "cash", "cash_held", "positions")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    CASH_FIELD_NUMBER: _ClassVar[int]
    CASH_HELD_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    account: str
    cash: int
    cash_held: int
    positions: _containers.RepeatedCompositeFieldContainer[Position]
    def __init__(self, account: _Optional[str] = ..., cash: _Optional[int] = ..., cash_held: _Optional[int] = ..., positions: _Optional[_Iterable[_Union[Position, _Mapping]]] = ...) -> None: ...
