"""Compact encodings of the cursors: varints, BLAKE2b hashes, packed edges and front-coded snapshots."""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Sequence

EDGE_HASH_BYTES = 8
SNAPSHOT_HASH_BYTES = 6


def _varint(n: int, out: bytearray) -> None:
    if n < 0:
        raise ValueError(f"varint of a negative number {n}")
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def version_hash(key: str, etag: str) -> bytes:
    """8-byte hash of an object version ``(key, ETag)`` (the window layout's edge entries)."""
    return hashlib.blake2b(f"{key}\x1f{etag}".encode(), digest_size=EDGE_HASH_BYTES).digest()


def etag_hash(etag: str) -> bytes:
    """6-byte hash of an ETag (the snapshot layout's change check)."""
    return hashlib.blake2b(etag.encode(), digest_size=SNAPSHOT_HASH_BYTES).digest()


def encode_edge(floor: int, edge: dict[int, set[bytes]]) -> str:
    """``{second: {hash, ...}}`` -> base64 of (varint second delta, varint count, sorted hashes)..."""
    out = bytearray()
    previous = floor
    for second in sorted(edge):
        hashes = sorted(edge[second])
        if not hashes:
            continue
        _varint(second - previous, out)
        _varint(len(hashes), out)
        for h in hashes:
            out += h
        previous = second
    return base64.b64encode(bytes(out)).decode("ascii")


def decode_edge(floor: int, text: str) -> dict[int, set[bytes]]:
    data = base64.b64decode(text.encode("ascii"), validate=True)
    edge: dict[int, set[bytes]] = {}
    pos, second = 0, floor
    while pos < len(data):
        delta, pos = _read_varint(data, pos)
        count, pos = _read_varint(data, pos)
        second += delta
        end = pos + count * EDGE_HASH_BYTES
        if end > len(data):
            raise ValueError("truncated edge")
        edge[second] = {data[i : i + EDGE_HASH_BYTES] for i in range(pos, end, EDGE_HASH_BYTES)}
        pos = end
    return edge


def encode_snapshot(known: dict[str, bytes]) -> str:
    """``{key: etag hash}`` -> base64(zlib(front-coded keys, each followed by its hash)), in key order."""
    keys = sorted(known)
    return encode_entries(keys, [known[k] for k in keys])


def decode_snapshot(text: str) -> dict[str, bytes]:
    keys, hashes = decode_entries(text)
    return dict(zip(keys, hashes, strict=True))


def encode_entries(keys: Sequence[str], hashes: Sequence[bytes]) -> str:
    """Sorted ``keys`` with their ETag hashes -> base64(zlib(front-coded entries)).

    Each entry is ``varint(bytes shared with the previous key), varint(rest length), rest, hash``,
    so at most ``len(key) + 4 + SNAPSHOT_HASH_BYTES`` bytes before compression (keys are at most
    1,024 bytes, so each varint takes at most two bytes).
    """
    out = bytearray()
    previous = b""
    for key, h in zip(keys, hashes, strict=True):
        raw = key.encode("utf-8")
        shared = _shared_prefix(raw, previous)
        _varint(shared, out)
        _varint(len(raw) - shared, out)
        out += raw[shared:]
        out += h
        previous = raw
    return base64.b64encode(zlib.compress(bytes(out), 6)).decode("ascii")


def decode_entries(text: str) -> tuple[list[str], list[bytes]]:
    """The inverse of :func:`encode_entries`: the keys (in the order encoded) and their hashes."""
    data = zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True))
    keys: list[str] = []
    hashes: list[bytes] = []
    pos, previous, size = 0, b"", len(data)
    while pos < size:
        shared, pos = _read_varint(data, pos)
        length, pos = _read_varint(data, pos)
        raw = previous[:shared] + data[pos : pos + length]
        pos += length
        h = data[pos : pos + SNAPSHOT_HASH_BYTES]
        if len(h) != SNAPSHOT_HASH_BYTES:
            raise ValueError("truncated snapshot")
        pos += SNAPSHOT_HASH_BYTES
        keys.append(raw.decode("utf-8"))
        hashes.append(h)
        previous = raw
    return keys, hashes


def encode_refs(refs: Sequence[str]) -> str:
    """A list of chunk references (ASCII, no newlines) -> base64(zlib(newline-joined))."""
    return base64.b64encode(zlib.compress("\n".join(refs).encode("ascii"), 6)).decode("ascii")


def decode_refs(text: str) -> list[str]:
    data = zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True)).decode("ascii")
    return data.split("\n") if data else []


def _shared_prefix(a: bytes, b: bytes) -> int:
    """Length of the common prefix of ``a`` and ``b`` (binary search on slices: C-speed compares)."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
