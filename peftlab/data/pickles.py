"""Refuse pickle by what a file is, not what it is called.

A pickled DataFrame runs code when it is read, so no fetched table may be one, whatever its name (`.pkl.compress`,
`.csv`) or `data.format` says. A first byte proves nothing (protocol 0/1 pickles start with printable bytes, as
CSVs do), so the opcode stream itself is walked with `pickletools`' opcode table, after undoing any compression
the content (not the name) shows: gzip, bz2, xz, legacy lzma, zstd, zip (every member) and raw zlib (joblib's
`.compress`).

Written by hand because nothing in the stack answers "is this a pickle" without loading it: `pickletools.genops`
reads every argument into memory (a 4-byte length in a CSV's header can ask for gigabytes), so this walker skips
long arguments in chunks and never holds more than one line or chunk.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import pickletools
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import zstandard

from peftlab.core.errors import PeftlabError

OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
# Opcodes that import or call something: the reason pickle is refused. A stream that reaches STOP without one is
# plain data (`N.`, "None", is also how a CSV cell "N.A." begins), so it does not count as a pickle here.
CALLS = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "REDUCE", "BUILD", "EXT1", "EXT2", "EXT4"}
LENGTH_BYTES = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
                pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}
MAX_LINE = 1 << 24      # a protocol-0 line (a string, a global's name): 16 MiB is far past any real one
CHUNK = 1 << 20
# what a decompressor raises on bytes that only looked like its format
NOT_THIS_LAYER = (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error, zipfile.BadZipFile, RuntimeError,
                  zstandard.ZstdError)
ZIP_MEMBERS = 64        # members looked at inside one zip (pandas reads a one-member zip)


def _skip(f: BinaryIO, n: int) -> bool:
    """Consume n bytes in chunks; False when the stream ends first."""
    while n > 0:
        got = len(f.read(min(n, CHUNK)))
        if got == 0:
            return False
        n -= got
    return True


def _walk(f: BinaryIO) -> bool:
    """True when `f` is a pickle that imports or calls something: every opcode is known, every argument complete
    and well formed, and either STOP is reached, or the stream opened with PROTO 2-5 (byte 0x80 then 2..5, which
    no text or parquet file starts with) and a call came before anything malformed. The second rule is for
    joblib, which writes raw array bytes into the middle of its pickle stream."""
    calls, proto = False, False
    while True:
        op = OPCODES.get(f.read(1))
        if op is None:                      # unknown byte or end of stream before STOP
            return False
        calls = calls or op.name in CALLS
        arg = op.arg
        if arg is not None:
            if arg.n >= 0:                  # fixed width
                data = f.read(arg.n)
                if len(data) != arg.n:
                    return False
                if op.name == "PROTO" and not proto:
                    proto = 2 <= data[0] <= 5
            elif arg.n == pickletools.UP_TO_NEWLINE:
                text, checked = b"", True
                for _ in range(2 if op.name in ("GLOBAL", "INST") else 1):
                    line = f.readline(MAX_LINE)
                    while line and not line.endswith(b"\n"):   # past MAX_LINE (a pyarrow buffer as one protocol-0
                        checked, line = False, f.readline(CHUNK)  # string): skip to its end unchecked
                    if not line:
                        return False
                    text += line
                try:
                    if checked:
                        arg.reader(io.BytesIO(text))   # e.g. INT wants a decimal, STRING a quoted literal
                except (ValueError, UnicodeDecodeError, OverflowError):
                    return False
            else:                           # a length prefix, then that many bytes
                width = LENGTH_BYTES[arg.n]
                head = f.read(width)
                if len(head) != width or not _skip(f, int.from_bytes(head, "little")):
                    return False
        if op.name == "STOP" or (proto and calls):
            return calls


class _Zlib(io.RawIOBase):
    """A raw zlib stream as a readable file (the stdlib has no file wrapper for zlib, only for gzip)."""

    def __init__(self, path: Path):
        self._f, self._d, self._buf = open(path, "rb"), zlib.decompressobj(), b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf and not self._d.eof:
            raw = self._d.unconsumed_tail or self._f.read(CHUNK)   # input left over by the last call comes first
            if not raw:
                break
            self._buf = self._d.decompress(raw, CHUNK)
        n = min(len(b), len(self._buf))
        b[:n], self._buf = self._buf[:n], self._buf[n:]
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def _is_zlib(head: bytes) -> bool:
    # RFC 1950: deflate method (low nibble 8), window <= 32K, and the header as a big-endian number divisible by 31
    return len(head) >= 2 and head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and int.from_bytes(head[:2], "big") % 31 == 0


def _zstd(path: Path) -> BinaryIO:
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))


def _views(path: Path) -> Iterator[tuple[str, Callable[[], BinaryIO]]]:
    """(layer name, opener) for the raw bytes and for each decompression the content's magic bytes call for."""
    with open(path, "rb") as f:
        head = f.read(8)
    yield "", lambda: open(path, "rb")
    if head[:2] == b"\x1f\x8b":
        yield "gzip", lambda: gzip.open(path, "rb")
    if head[:3] == b"BZh":
        yield "bz2", lambda: bz2.open(path, "rb")
    if head[:6] == b"\xfd7zXZ\x00":
        yield "xz", lambda: lzma.open(path, "rb")
    if head[:1] == b"\x5d":                # legacy .lzma (joblib's compress="lzma")
        yield "lzma", lambda: lzma.open(path, "rb", format=lzma.FORMAT_ALONE)
    if head[:4] == b"\x28\xb5\x2f\xfd":
        yield "zstd", lambda: _zstd(path)
    if _is_zlib(head):
        yield "zlib", lambda: io.BufferedReader(_Zlib(path))
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                members = [i.filename for i in zf.infolist() if not i.is_dir()][:ZIP_MEMBERS]
        except zipfile.BadZipFile:
            members = []
        for m in members:
            yield f"zip member {m}", lambda m=m: zipfile.ZipFile(path).open(m)


def pickle_layer(path: Path) -> str | None:
    """The layer in which `path` holds a pickle ("" for the raw file, "gzip", "zip member x.pkl", ...), or None."""
    for layer, opener in _views(path):
        try:
            with opener() as f:
                if _walk(f):
                    return layer
        except NOT_THIS_LAYER:
            continue    # not this compression after all (e.g. a CSV that begins "x^" looks like a zlib header)
    return None


def refuse_pickle(path: Path, allowed: str) -> None:
    """One error line naming the file when its content is a pickle, whatever its name or `data.format`."""
    layer = pickle_layer(path)
    if layer is not None:
        inside = f" (inside its {layer} layer)" if layer else ""
        raise PeftlabError(f"{path.name} is a pickle{inside}: pickle runs code when read and is refused from any "
                           f"data source; allowed: {allowed}")
