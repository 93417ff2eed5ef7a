"""TFRecord framing and tf.train.Example decoding against bytes built here by hand from the formats' definitions
(struct, a bitwise CRC32C from the Castagnoli polynomial, protobuf wire bytes), not with metarun's code; damage
is a one-line RunError naming the file and the record."""

import struct
import sys

import pytest

from metarun.data.files.tfrecord import parse_example, records
from metarun.utils.errors import RunError


def crc32c(data: bytes) -> int:
    """CRC32C bit by bit: reflected Castagnoli polynomial 0x82F63B78, initial and final XOR 0xFFFFFFFF."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


def record(data: bytes) -> bytes:
    """uint64 length | uint32 masked CRC of the length | data | uint32 masked CRC of the data, little-endian."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked(length)) + data + struct.pack("<I", masked(data))


def varint(value: int) -> bytes:
    value %= 2**64  # int64 on the wire: two's complement in 64 bits
    out = b""
    while value >= 0x80:
        out += bytes([value & 0x7F | 0x80])
        value >>= 7
    return out + bytes([value])


def ld(number: int, payload: bytes) -> bytes:
    """A length-delimited field: key (number << 3 | 2), length varint, payload."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def example(**features: bytes) -> bytes:
    """Example {features = 1: Features {feature = 1: map entries {key = 1, value = 2: Feature}}}."""
    return ld(1, b"".join(ld(1, ld(1, name.encode()) + ld(2, feature)) for name, feature in features.items()))


def test_the_crc_here_is_crc32c():
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C


def test_records_are_read_in_order_with_both_crcs_checked(tmp_path):
    payloads = [b"first", b"", bytes(range(256)) * 40]
    path = tmp_path / "a.tfrecords"
    path.write_bytes(b"".join(record(p) for p in payloads))
    assert list(records(path)) == payloads
    (tmp_path / "empty.tfrecords").write_bytes(b"")
    assert list(records(tmp_path / "empty.tfrecords")) == []


def damaged_file(tmp_path, damage) -> tuple:
    """A file of three good records whose third (record 2) ``damage(bytes)`` changes."""
    path = tmp_path / "class.tfrecords"
    path.write_bytes(record(b"zero") + record(b"one") + damage(record(b"two-two")))
    return path


DAMAGE = {
    "length crc": (lambda r: r[:8] + bytes([r[8] ^ 1]) + r[9:], "CRC of its length"),
    "data crc": (lambda r: r[:12] + b"T" + r[13:], "CRC of its data"),
    "footer crc": (lambda r: r[:-1] + bytes([r[-1] ^ 0x80]), "CRC of its data"),
    "cut in the header": (lambda r: r[:5], "header is cut short"),
    "cut in the data": (lambda r: r[:15], "cut short"),
    "cut in the footer": (lambda r: r[:-2], "cut short"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damage_is_one_line_naming_file_record_and_fix(tmp_path, kind):
    damage, what = DAMAGE[kind]
    path = damaged_file(tmp_path, damage)
    read = []
    with pytest.raises(RunError) as error:
        read.extend(records(path))
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "record 2 " in message and what in message, message
    assert "re-run the Meta-Dataset conversion" in message
    assert read == [b"zero", b"one"]  # the good records before the damage were read


def test_an_unreadable_file_is_one_line(tmp_path):
    with pytest.raises(RunError, match="cannot read") as error:
        list(records(tmp_path))  # a folder
    assert "\n" not in str(error.value) and str(tmp_path) in str(error.value)


def test_without_crc32c_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    (tmp_path / "a.tfrecords").write_bytes(record(b"x"))
    monkeypatch.setitem(sys.modules, "crc32c", None)  # import crc32c now raises ImportError
    with pytest.raises(RunError, match=r"needs crc32c: pip install crc32c \(or pip install -e '\.\[metadataset\]'\)"):
        list(records(tmp_path / "a.tfrecords"))


def test_an_example_written_out_byte_by_byte():
    # Example { features { feature { key: "label" value { int64_list { value: [7] } } } } }, packed as TF writes it
    data = bytes([0x0A, 16, 0x0A, 14, 0x0A, 5, *b"label", 0x12, 5, 0x1A, 3, 0x0A, 1, 7])
    assert parse_example(data) == {"label": [7]}


def test_bytes_int64_and_float_features():
    image = bytes(range(200)) * 3  # longer than 127 bytes: a two-byte length varint
    parsed = parse_example(example(
        image=ld(1, ld(1, image) + ld(1, b"")),  # BytesList of two values
        label=ld(3, ld(1, varint(3) + varint(300))),  # packed Int64List
        scale=ld(2, ld(1, struct.pack("<2f", 0.5, -2.0))),  # packed FloatList
    ))
    assert parsed == {"image": [image, b""], "label": [3, 300], "scale": [0.5, -2.0]}


def test_unpacked_lists_and_negative_int64():
    unpacked_ints = b"".join(bytes([0x08]) + varint(v) for v in (-1, 5, -(2**63), 2**63 - 1))  # field 1, wire 0
    unpacked_floats = b"".join(bytes([0x0D]) + struct.pack("<f", v) for v in (1.5, -0.25))  # field 1, wire 5
    assert varint(-1) == b"\xff" * 9 + b"\x01"  # ten bytes, as protobuf writes a negative int64
    parsed = parse_example(example(label=ld(3, unpacked_ints), scale=ld(2, unpacked_floats),
                                   packed=ld(3, ld(1, varint(-2) + varint(0)))))
    assert parsed == {"label": [-1, 5, -(2**63), 2**63 - 1], "scale": [1.5, -0.25], "packed": [-2, 0]}


def test_unknown_fields_are_skipped_and_an_empty_feature_has_no_values():
    unknown = bytes([0x28, 0x96, 0x01]) + bytes([0x31]) + bytes(8)  # field 5 varint 150, field 6 fixed64
    data = example(label=ld(3, ld(1, varint(4))) + unknown, empty=b"") + unknown
    assert parse_example(data) == {"label": [4], "empty": []}
    assert parse_example(b"") == {}


MALFORMED = {
    "a varint cut short": bytes([0x0A, 0x80]),
    "a length past the end": bytes([0x0A, 10, 0x0A]),
    "a varint of 11 bytes": bytes([0x08]) + b"\xff" * 10 + b"\x01",
    "a group (wire type 3)": bytes([0x0B]),
    "field number 0": bytes([0x02, 0]),
    "features as a varint": bytes([0x08, 1]),
    "a float list of 3 bytes": example(x=ld(2, ld(1, b"abc"))),
    "an int64 list as fixed32": example(x=ld(3, bytes([0x0D]) + bytes(4))),
    "a non-UTF-8 name": ld(1, ld(1, ld(1, b"\xff") + ld(2, b""))),
}


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_example_is_a_value_error(kind):
    with pytest.raises(ValueError):
        parse_example(MALFORMED[kind])
