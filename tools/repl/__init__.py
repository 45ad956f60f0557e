"""The `tickwire client` session: what the user types, the connection, what comes back.

The first modules do no I/O (`parsing`: commands, hex and JSON into messages; `events`:
frames into events; `completion`: what Tab offers), so tests call them directly and
`tickwire decode` shares them. The others own the socket and the terminal: `printers`,
`session` (`Session`) and `run` (`run_lines`, `run_interactive`).

Every result is an *event*: a plain dict that `--json` prints as one line and the human
printer renders with colour, so both outputs always say the same thing.

Everything public is re-exported here: `from tools.repl import X` is the interface.
"""

from tools.repl.completion import Candidate, candidates, make_completer
from tools.repl.events import (
    client_error,
    closed_event,
    code_label,
    decode_payload,
    describe_frame,
    fields_event,
    flag_names,
    frame_event,
    message_to_dict,
    server_error_event,
    session_event,
    type_name,
)
from tools.repl.parsing import (
    ALIASES,
    COMMANDS,
    HELP_TEXT,
    SESSION_MESSAGES,
    InputError,
    build_message,
    descriptor_of,
    parse_address,
    parse_hex,
    resolve_name,
    session_message,
    split_command,
    split_message,
    split_words,
)
from tools.repl.printers import HumanPrinter, JsonPrinter, Printer
from tools.repl.run import (
    EXIT_CONNECTION,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    exit_code,
    history_path,
    read_lines_async,
    run_interactive,
    run_lines,
)
from tools.repl.session import Session

__all__ = [
    "ALIASES",
    "COMMANDS",
    "EXIT_CONNECTION",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "HELP_TEXT",
    "SESSION_MESSAGES",
    "Candidate",
    "HumanPrinter",
    "InputError",
    "JsonPrinter",
    "Printer",
    "Session",
    "build_message",
    "candidates",
    "client_error",
    "closed_event",
    "code_label",
    "decode_payload",
    "describe_frame",
    "descriptor_of",
    "exit_code",
    "fields_event",
    "flag_names",
    "frame_event",
    "history_path",
    "make_completer",
    "message_to_dict",
    "parse_address",
    "parse_hex",
    "read_lines_async",
    "resolve_name",
    "run_interactive",
    "run_lines",
    "server_error_event",
    "session_event",
    "session_message",
    "split_command",
    "split_message",
    "split_words",
    "type_name",
]
