"""Chunk framing and the incremental decoder, whole and split at every boundary."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinystream.chunked import (
    LAST_CHUNK,
    ChunkedDecoder,
    ChunkedDecodingError,
    chunk_pieces,
    encode_chunk,
    encode_last_chunk,
)


def test_encode_chunk_format() -> None:
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert encode_chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"


def test_empty_payload_is_refused() -> None:
    """A zero-length chunk is the last chunk: framing one would end the body early."""
    with pytest.raises(ValueError, match="zero-length chunk"):
        encode_chunk(b"")
    with pytest.raises(ValueError, match="zero-length chunk"):
        chunk_pieces(b"")


def test_chunk_pieces_do_not_copy_the_payload() -> None:
    payload = b"y" * 100_000
    size_line, body, crlf = chunk_pieces(payload)
    assert body is payload
    assert size_line + body + crlf == encode_chunk(payload)


def test_last_chunk_and_trailers() -> None:
    assert encode_last_chunk() == LAST_CHUNK
    assert encode_last_chunk([("Checksum", "abc")]) == b"0\r\nChecksum: abc\r\n\r\n"
    with pytest.raises(ValueError, match="invalid trailer name"):
        encode_last_chunk([("Bad Name", "x")])
    with pytest.raises(ValueError, match="invalid trailer value"):
        encode_last_chunk([("X", "a\r\nInjected: 1")])


def decode_in_pieces(data: bytes, cuts: list[int]) -> tuple[bytes, ChunkedDecoder]:
    decoder = ChunkedDecoder()
    out = []
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out.append(decoder.feed(data[start:cut]))
        start = cut
    return b"".join(out), decoder


def test_decoder_at_every_split_point() -> None:
    body = encode_chunk(b"hello") + encode_chunk(b"world!") + b"0\r\nX-T: 1\r\n\r\nNEXT"
    for i in range(len(body) + 1):
        payload, decoder = decode_in_pieces(body, [i])
        assert payload == b"helloworld!", i
        assert decoder.done and decoder.trailers == [(b"x-t", b"1")] and decoder.unused == b"NEXT"


def test_decoder_byte_by_byte_and_extensions() -> None:
    body = b"5;name=value\r\nhello\r\n0\r\n\r\n"
    decoder = ChunkedDecoder()
    assert b"".join(decoder.feed(body[i : i + 1]) for i in range(len(body))) == b"hello"
    assert decoder.done


@pytest.mark.parametrize(
    "bad",
    [
        b"zz\r\nhello\r\n",  # size is not hex
        b"5\r\nhelloXX",  # payload not followed by CRLF
        b"\r\n",  # empty size line
        b"-5\r\nhello\r\n",  # sign is not allowed
        b"0\r\nno colon here\r\n\r\n",  # malformed trailer
    ],
)
def test_decoder_rejects_malformed_bodies(bad: bytes) -> None:
    with pytest.raises(ChunkedDecodingError):
        ChunkedDecoder().feed(bad)


def test_decoder_bounds_the_size_line() -> None:
    with pytest.raises(ChunkedDecodingError, match="too long"):
        ChunkedDecoder().feed(b"1" * 5000)


chunks_strategy = st.lists(st.binary(min_size=1, max_size=300), max_size=20)


@given(chunks=chunks_strategy, cuts=st.lists(st.integers(min_value=0, max_value=8000), max_size=12))
def test_roundtrip_any_chunks_any_splits(chunks: list[bytes], cuts: list[int]) -> None:
    """Whatever the chunks and wherever the reads fall, decoding gives back the bytes."""
    wire = b"".join(encode_chunk(c) for c in chunks) + LAST_CHUNK
    payload, decoder = decode_in_pieces(wire, [c for c in cuts if c <= len(wire)])
    assert payload == b"".join(chunks)
    assert decoder.done and decoder.unused == b""


@given(chunks=chunks_strategy)
def test_h11_agrees_with_our_framing(chunks: list[bytes]) -> None:
    """h11's client parser reads our framing as the same body."""
    wire = b"".join(encode_chunk(c) for c in chunks) + LAST_CHUNK
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + wire)
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            assert isinstance(event, h11.Response)
    assert body == b"".join(chunks)
