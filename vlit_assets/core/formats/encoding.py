"""Byte-level checks of JSON text: invalid UTF-8 and lone UTF-16 surrogate escapes."""

from __future__ import annotations

import codecs
import re

import numpy as np

BOM = b"\xef\xbb\xbf"
# Any \\uD800-\\uDFFF escape; whether it is half of a pair is decided around each match.
# (One regular expression with a look-behind tests every byte: 8 s on 130 MB; this pattern
# starts with a literal, so re skips to each "\\u" and most files have none.)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_DECODE_BLOCK = 1 << 24


def has_lone_surrogate_escape(data) -> bool:
    """True when the JSON text holds a ``\\uD800``-``\\uDFFF`` escape that is not half of a
    high-low pair. ``data`` is bytes, an mmap or a memoryview."""
    expect_low_at = -1
    for match in _SURROGATE_ESCAPE.finditer(data):
        high = match.group()[3:4] in b"89abAB"
        if match.start() == expect_low_at:
            if high:
                return True
            expect_low_at = -1
            continue
        if expect_low_at >= 0 or not high:
            return True  # a high escape left unpaired, or a low one alone
        expect_low_at = match.end()
    return expect_low_at >= 0


def bad_text(data: memoryview | bytes | np.ndarray) -> bool:
    """True when the bytes (a uint8 array is its bytes) hold invalid UTF-8 or a lone surrogate
    escape (``\\ud800``)."""
    # A memoryview, so that slices of it are views, not copies.
    view = data.data if isinstance(data, np.ndarray) else memoryview(data)
    if has_lone_surrogate_escape(view):
        return True
    if not (np.frombuffer(view, np.uint8) >= 0x80).any():
        return False
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for off in range(0, len(view), _DECODE_BLOCK):
            decoder.decode(view[off : off + _DECODE_BLOCK])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return True
    return False
