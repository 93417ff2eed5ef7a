"""TFRecord files and ``tf.train.Example`` records, read without TensorFlow (Meta-Dataset's converted sources).

A TFRecord file is a sequence of records, each framed as (TensorFlow's ``tensorflow/core/lib/io/record_writer.cc``)::

    uint64 length (little-endian) | uint32 masked CRC32C of those 8 bytes | data | uint32 masked CRC32C of data

where masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8, mod 2**32. The data of Meta-Dataset's records is a
serialised ``tf.train.Example`` (``tensorflow/core/example/{example,feature}.proto``)::

    Example {Features features = 1}            Features {map<string, Feature> feature = 1}
    Feature {oneof: BytesList bytes_list = 1 | FloatList float_list = 2 | Int64List int64_list = 3}
    BytesList {repeated bytes value = 1}  FloatList {repeated float value = 1}  Int64List {repeated int64 value = 1}

decoded here by a small protobuf wire-format reader (varints and length-delimited fields; a map entry is a message
{key = 1, value = 2}; numeric lists packed or not). CRC32C comes from the ``crc32c`` package (C code): checking
it in Python would cost more than decoding the images.
"""

import struct
from pathlib import Path
from typing import Iterator

from metarun.utils.errors import RunError

MASK_DELTA = 0xA282EAD8
HEADER = struct.Struct("<QI")  # length, masked CRC32C of the length's 8 bytes
FOOTER = struct.Struct("<I")  # masked CRC32C of the data
FIX = "re-run the Meta-Dataset conversion for that source or replace the file"
# protobuf wire types (https://protobuf.dev/programming-guides/encoding/)
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C of ``data``: the CRC rotated right by 15 bits plus a constant, mod 2**32 (masked
    so that a CRC of data that itself holds CRCs is not degenerate)."""
    crc = _crc32c()(data)
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF


def _crc32c():
    """The ``crc32c`` package's function, or one RunError with the install."""
    try:
        import crc32c
    except ImportError as err:
        raise RunError("reading Meta-Dataset's TFRecords needs crc32c: pip install crc32c (or pip install -e "
                       "'.[metadataset]')") from err
    return crc32c.crc32c


def records(path: Path) -> Iterator[bytes]:
    """Yield the data of each record of the TFRecord file at ``path``, in order, both CRCs checked.

    The file is read one record at a time, so memory holds one record whatever the file's size.

    Raises:
        RunError: the file cannot be read, a CRC does not match or a record is cut short; the one line names
            the file, the record (numbered from 0) and the fix.
    """
    _crc32c()  # a missing package is said before the file is opened
    index = 0
    try:
        with open(path, "rb") as f:
            while header := f.read(HEADER.size):
                yield _record(f, header, path, index)
                index += 1
    except OSError as err:  # the source's read failure, not the cache's (whose writer reads OSError as a full disk)
        raise RunError(f"cannot read {path} ({err.__class__.__name__}: {err.strerror or err}); check the file's "
                       "permissions or " + FIX) from err


def _record(f, header: bytes, path: Path, index: int) -> bytes:
    """The data of record ``index``, whose header was just read from ``f``."""
    if len(header) < HEADER.size:
        raise damaged(path, index, f"its header is cut short ({len(header)} of {HEADER.size} bytes): the file is "
                                   "truncated")
    length, length_crc = HEADER.unpack(header)
    if masked_crc(header[:8]) != length_crc:
        raise damaged(path, index, "the CRC of its length does not match")
    data = f.read(length)
    footer = f.read(FOOTER.size)
    if len(data) < length or len(footer) < FOOTER.size:
        raise damaged(path, index, f"it is cut short (a {length}-byte record, the file ends first): the file is "
                                   "truncated")
    if masked_crc(data) != FOOTER.unpack(footer)[0]:
        raise damaged(path, index, "the CRC of its data does not match")
    return data


def damaged(path: Path, index: int, what: str) -> RunError:
    """The one-line error for record ``index`` of ``path``: ``what`` is wrong, and the fix."""
    return RunError(f"{at(path, index)} is damaged: {what}; {FIX}")


def at(path: Path, index: int) -> str:
    """Where record ``index`` of ``path`` is, as errors say it."""
    return f"{path}: record {index} (counting from 0)"


def parse_example(data: bytes) -> dict:
    """The features of a serialised ``tf.train.Example``: {name: list of bytes | list of int | list of float}.

    Raises:
        ValueError: ``data`` is not a well-formed Example (the caller names the file and record).
    """
    view = memoryview(data)
    features = {}
    for number, wire, value in _fields(view):
        if number == 1:  # Example.features; repeated occurrences of a message field merge, as protobuf's do
            for entry_number, entry_wire, entry in _fields(_length_delimited(wire, value, "Example.features")):
                if entry_number == 1:  # Features.feature, one map entry
                    name, feature = _map_entry(_length_delimited(entry_wire, entry, "Features.feature"))
                    features[name] = feature
    return features


def _map_entry(view: memoryview) -> tuple:
    """(key, values) of one ``map<string, Feature>`` entry."""
    key, feature = "", []
    for number, wire, value in _fields(view):
        if number == 1:
            try:
                key = bytes(_length_delimited(wire, value, "feature key")).decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"a feature name is not UTF-8 ({err})") from err
        elif number == 2:
            feature = _feature(_length_delimited(wire, value, f"feature {key!r}"))
    return key, feature


def _feature(view: memoryview) -> list:
    """The values of a ``Feature`` (its oneof kind set last wins; none set: no values)."""
    values = []
    for number, wire, value in _fields(view):
        if number in LISTS:
            values = LISTS[number](_length_delimited(wire, value, "Feature's list"))
    return values


def _bytes_list(view: memoryview) -> list:
    return [bytes(_length_delimited(wire, value, "BytesList.value")) for number, wire, value in _fields(view)
            if number == 1]


def _float_list(view: memoryview) -> list:
    values = []
    for number, wire, value in _fields(view):
        if number != 1:
            continue
        if wire == FIXED32:
            values.append(struct.unpack("<f", value)[0])
        elif wire == LENGTH and len(value) % 4 == 0:  # packed
            values.extend(struct.unpack(f"<{len(value) // 4}f", value))
        else:
            raise ValueError(f"FloatList.value has wire type {wire} (or a packed length of {len(value)} bytes)")
    return values


def _int64_list(view: memoryview) -> list:
    values = []
    for number, wire, value in _fields(view):
        if number != 1:
            continue
        if wire == VARINT:
            values.append(_signed(value))
        elif wire == LENGTH:  # packed: varints back to back
            position = 0
            while position < len(value):
                raw, position = _varint(value, position)
                values.append(_signed(raw))
        else:
            raise ValueError(f"Int64List.value has wire type {wire}")
    return values


LISTS = {1: _bytes_list, 2: _float_list, 3: _int64_list}  # Feature's oneof field numbers


def _signed(raw: int) -> int:
    """An int64 from its varint: negative numbers are two's complement in 64 bits (ten-byte varints)."""
    return raw - (1 << 64) if raw >= 1 << 63 else raw


def _length_delimited(wire: int, value, what: str) -> memoryview:
    if wire != LENGTH:
        raise ValueError(f"{what} has wire type {wire} where a length-delimited field (2) belongs")
    return value


def _fields(view: memoryview) -> Iterator[tuple]:
    """Yield (field number, wire type, value) of each field of a message: an int for a varint, a memoryview of
    the bytes for the others."""
    position = 0
    while position < len(view):
        key, position = _varint(view, position)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError(f"a field numbered 0 at byte {position}")
        if wire == VARINT:
            value, position = _varint(view, position)
        elif wire in (FIXED64, FIXED32, LENGTH):
            if wire == LENGTH:
                size, position = _varint(view, position)
            else:
                size = 8 if wire == FIXED64 else 4
            if position + size > len(view):
                raise ValueError(f"field {number} runs {position + size - len(view)} bytes past the end of its message")
            value, position = view[position:position + size], position + size
        else:  # 3 and 4 are groups (deprecated, never in an Example), 6 and 7 do not exist
            raise ValueError(f"field {number} has wire type {wire}, which an Example does not use")
        yield number, wire, value


def _varint(view: memoryview, position: int) -> tuple:
    """(value, next position) of the varint at ``position``: 7 bits a byte, least significant first, at most 10."""
    value = 0
    for shift in range(0, 70, 7):
        if position >= len(view):
            raise ValueError("a varint runs past the end of its message")
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, position
    raise ValueError("a varint is longer than 10 bytes")
