"""Request-target normalisation: one unambiguous path, or a refusal saying why not.

A proxy that checks a prefix on one spelling of a path while the server behind it routes
on another is bypassed by the difference (``/v1/fleet/../control``, ``/v1%2Ffleet/x``,
``//v1/fleet/x``). So the relay decodes the target once, refuses every spelling a legitimate
client never sends (encoded separators, dot segments, empty segments, double encoding,
control or non-ASCII characters), and forwards the decoded canonical path, never the
original bytes. Flower's Fleet client sends plain ``/v1/fleet/<endpoint>`` targets, so
strictness costs it nothing.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = ["FLEET_API_PREFIX", "PathRefusal", "RequestPath", "fleet_api_path", "normalise_path"]

FLEET_API_PREFIX: Final = "/v1/fleet/"
_FLEET_ENDPOINT: Final = re.compile(r"/v1/fleet/[a-z0-9]+(?:-[a-z0-9]+)*")
_UNRESERVED: Final = frozenset(string.ascii_letters + string.digits + "-._~")
# RFC 3986 pchar without '%' (handled as an escape): unreserved, sub-delims, ':' and '@'.
_RAW_SEGMENT_CHARACTERS: Final = _UNRESERVED | frozenset("!$&'()*+,;=:@")
_HEX_DIGITS: Final = frozenset(string.hexdigits)


class PathRefusal(StrEnum):
    """Why a request target was refused; values are audit reasons."""

    NOT_ORIGIN_FORM = "path_not_origin_form"
    """The target does not start with '/' (absolute-form, authority-form or '*')."""
    ENCODED_SEPARATOR = "path_encoded_separator"
    """A percent-encoded '/' or '\\' (``%2F``, ``%5C``): one segment or two, by server."""
    DOT_SEGMENT = "path_dot_segment"
    """A '.' or '..' segment, encoded or not."""
    EMPTY_SEGMENT = "path_empty_segment"
    """Two slashes in a row, or a trailing slash."""
    INVALID_CHARACTER = "path_invalid_character"
    """A character outside RFC 3986 path characters, a fragment, a malformed or double
    escape, or an escape of a reserved character."""
    QUERY_NOT_ALLOWED = "path_query_not_allowed"
    """A query string on an endpoint that takes none."""
    NOT_FLEET_API = "path_not_fleet_api"
    """A well-formed path outside ``/v1/fleet/<endpoint>``."""


@dataclass(frozen=True)
class RequestPath:
    """A decoded, canonical path and the raw query (without '?', empty when absent)."""

    path: str
    query: str

    @property
    def target(self) -> str:
        """The request-target to forward: the canonical path and the query as received."""
        return f"{self.path}?{self.query}" if self.query else self.path


def _decode_segment(segment: str) -> str | PathRefusal:
    decoded: list[str] = []
    position = 0
    while position < len(segment):
        character = segment[position]
        if character == "%":
            escape = segment[position + 1 : position + 3]
            if len(escape) != 2 or not set(escape) <= _HEX_DIGITS:
                return PathRefusal.INVALID_CHARACTER
            value = chr(int(escape, 16))
            if value in "/\\":
                return PathRefusal.ENCODED_SEPARATOR
            if value not in _UNRESERVED:  # '%25' (double encoding), reserved or control
                return PathRefusal.INVALID_CHARACTER
            decoded.append(value)
            position += 3
            continue
        if character not in _RAW_SEGMENT_CHARACTERS:
            return PathRefusal.INVALID_CHARACTER
        decoded.append(character)
        position += 1
    return "".join(decoded)


def normalise_path(target: str) -> RequestPath | PathRefusal:
    """Decode an origin-form request target into its canonical path, or refuse it."""
    if not target.startswith("/"):
        return PathRefusal.NOT_ORIGIN_FORM
    if "#" in target:
        return PathRefusal.INVALID_CHARACTER
    raw_path, _, query = target.partition("?")
    if any(not 0x21 <= ord(character) <= 0x7E for character in query):
        return PathRefusal.INVALID_CHARACTER
    segments: list[str] = []
    for raw_segment in raw_path[1:].split("/"):
        segment = _decode_segment(raw_segment)
        if isinstance(segment, PathRefusal):
            return segment
        if segment in (".", ".."):
            return PathRefusal.DOT_SEGMENT
        if not segment:
            return PathRefusal.EMPTY_SEGMENT
        segments.append(segment)
    return RequestPath("/" + "/".join(segments), query)


def fleet_api_path(target: str) -> RequestPath | PathRefusal:
    """The canonical ``/v1/fleet/<endpoint>`` path of ``target``, or why it is refused."""
    normalised = normalise_path(target)
    if isinstance(normalised, PathRefusal):
        return normalised
    if not _FLEET_ENDPOINT.fullmatch(normalised.path):
        return PathRefusal.NOT_FLEET_API
    if normalised.query:
        return PathRefusal.QUERY_NOT_ALLOWED
    return normalised
