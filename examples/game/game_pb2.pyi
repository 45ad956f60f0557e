from protocol.proto import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LobbyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LobbyReply(_message.Message):
    __slots__ = ("queued", "matches", "rating")
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    queued: int
    matches: int
    rating: int
    def __init__(self, queued: _Optional[int] = ..., matches: _Optional[int] = ..., rating: _Optional[int] = ...) -> None: ...

class QueueRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QueueReply(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class LeaveQueueRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LeaveQueueReply(_message.Message):
    __slots__ = ("was_queued",)
    WAS_QUEUED_FIELD_NUMBER: _ClassVar[int]
    was_queued: bool
    def __init__(self, was_queued: _Optional[bool] = ...) -> None: ...

class MatchFound(_message.Message):
    __slots__ = ("match_id", "seat", "players", "tick_rate")
    MATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SEAT_FIELD_NUMBER: _ClassVar[int]
    PLAYERS_FIELD_NUMBER: _ClassVar[int]
    TICK_RATE_FIELD_NUMBER: _ClassVar[int]
    match_id: str
    seat: int
    players: _containers.RepeatedScalarFieldContainer[str]
    tick_rate: int
    def __init__(self, match_id: _Optional[str] = ..., seat: _Optional[int] = ..., players: _Optional[_Iterable[str]] = ..., tick_rate: _Optional[int] = ...) -> None: ...

class Input(_message.Message):
    __slots__ = ("match_id", "seq", "dx", "dy")
    MATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DX_FIELD_NUMBER: _ClassVar[int]
    DY_FIELD_NUMBER: _ClassVar[int]
    match_id: str
    seq: int
    dx: int
    dy: int
    def __init__(self, match_id: _Optional[str] = ..., seq: _Optional[int] = ..., dx: _Optional[int] = ..., dy: _Optional[int] = ...) -> None: ...

class PlayerState(_message.Message):
    __slots__ = ("seat", "user", "x", "y", "score", "away", "input_seq")
    SEAT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    AWAY_FIELD_NUMBER: _ClassVar[int]
    INPUT_SEQ_FIELD_NUMBER: _ClassVar[int]
    seat: int
    user: str
    x: int
    y: int
    score: int
    away: bool
    input_seq: int
    def __init__(self, seat: _Optional[int] = ..., user: _Optional[str] = ..., x: _Optional[int] = ..., y: _Optional[int] = ..., score: _Optional[int] = ..., away: _Optional[bool] = ..., input_seq: _Optional[int] = ...) -> None: ...

class Coin(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ...) -> None: ...

class MatchState(_message.Message):
    __slots__ = ("match_id", "tick", "players", "coins")
    MATCH_ID_FIELD_NUMBER: _ClassVar[int]
    TICK_FIELD_NUMBER: _ClassVar[int]
    PLAYERS_FIELD_NUMBER: _ClassVar[int]
    COINS_FIELD_NUMBER: _ClassVar[int]
    match_id: str
    tick: int
    players: _containers.RepeatedCompositeFieldContainer[PlayerState]
    coins: _containers.RepeatedCompositeFieldContainer[Coin]
    def __init__(self, match_id: _Optional[str] = ..., tick: _Optional[int] = ..., players: _Optional[_Iterable[_Union[PlayerState, _Mapping]]] = ..., coins: _Optional[_Iterable[_Union[Coin, _Mapping]]] = ...) -> None: ...

class CoinTaken(_message.Message):
    __slots__ = ("match_id", "tick", "seat", "x", "y")
    MATCH_ID_FIELD_NUMBER: _ClassVar[int]
    TICK_FIELD_NUMBER: _ClassVar[int]
    SEAT_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    match_id: str
    tick: int
    seat: int
    x: int
    y: int
    def __init__(self, match_id: _Optional[str] = ..., tick: _Optional[int] = ..., seat: _Optional[int] = ..., x: _Optional[int] = ..., y: _Optional[int] = ...) -> None: ...

class MatchOver(_message.Message):
    __slots__ = ("match_id", "winner_seat", "winner", "players", "rating")
    MATCH_ID_FIELD_NUMBER: _ClassVar[int]
    WINNER_SEAT_FIELD_NUMBER: _ClassVar[int]
    WINNER_FIELD_NUMBER: _ClassVar[int]
    PLAYERS_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    match_id: str
    winner_seat: int
    winner: str
    players: _containers.RepeatedCompositeFieldContainer[PlayerState]
    rating: int
    def __init__(self, match_id: _Optional[str] = ..., winner_seat: _Optional[int] = ..., winner: _Optional[str] = ..., players: _Optional[_Iterable[_Union[PlayerState, _Mapping]]] = ..., rating: _Optional[int] = ...) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("match_id", "text")
    MATCH_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    match_id: str
    text: str
    def __init__(self, match_id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class ChatReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChatLine(_message.Message):
    __slots__ = ("match_id", "user", "text")
    MATCH_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    match_id: str
    user: str
    text: str
    def __init__(self, match_id: _Optional[str] = ..., user: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class LeaveMatchRequest(_message.Message):
    __slots__ = ("match_id",)
    MATCH_ID_FIELD_NUMBER: _ClassVar[int]
    match_id: str
    def __init__(self, match_id: _Optional[str] = ...) -> None: ...

class LeaveMatchReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
