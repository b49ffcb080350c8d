"""The shards eegcache writes, written and read straight: Blosc, CRC32C in hardware, byte ranges.

Writing (``encode_array``): an array's ``zarr.json`` and shard files as bytes, exactly the bytes zarr-python writes
for the same array and codecs (tests/test_shards_write.py compares them file by file), in ~1/8 of the CPU time:
zarr-python's synchronous API costs ~20 ms per object in event-loop round trips and thread hand-offs beyond the
~2–3 ms of Blosc encoding, the largest part of ingest's per-file overhead on short files (bench/RESULTS.md,
2026-12-02, evening).

Reading: the ``direct`` window reader. For the one layout ingest writes (``eegcache.store.layout``: the sharding codec
along time, inner chunks ``bytes → blosc → crc32c``, shard index ``bytes → crc32c`` at the end of the shard) a
window is a handful of inner chunks of one shard file, and what the general readers spend beyond reading and
decoding them is their own machinery: zarr-python's per-chunk async path (~10 ms per 60 s window), and in
tensorstore a software CRC32C that is ~40 % of its read (bench/RESULTS.md, 2026-12-02). Here each shard file is
mapped read-only once per array handle and process (objects are immutable: replaced by rename, never rewritten), its
index checked once, and a window's chunks are checked with google-crc32c (the hardware CRC zarr-python itself uses)
and decoded by numcodecs' Blosc (zarr's own Blosc) straight from the map: one thread, no thread pool, safe in forked
DataLoader workers. Mapped pages are the page cache's, shared by every process, and count in a reader's resident
size as it touches them, as with any memory-mapped dataset.

Only metadata this module understands exactly is read this way (``ShardedArray.open`` returns None otherwise, and
the reader uses a general backend for that object): objects of an earlier layout or written by other tools still
read, through tensorstore or zarr-python. tests/test_reader.py checks the bytes against zarr-python's at chunk and
shard edges, and that a damaged chunk or shard index fails the read.
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

_EMPTY = np.uint64(2**64 - 1)  # the shard index's (offset, nbytes) of an inner chunk that was never written
_DTYPES = {"float32": "<f4", "float16": "<f2", "float64": "<f8", "uint8": "u1"}
_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
JSON_INDENT = 2  # zarr-python's default ``json_indent``: the same bytes as its own metadata


def metadata_bytes(document: dict) -> bytes:
    """A ``zarr.json`` document as zarr-python serialises it."""
    return json.dumps(document, indent=JSON_INDENT, allow_nan=True).encode()


def _bytes_codec(dtype: np.dtype) -> dict:
    # zarr-python writes no endianness for one-byte types, where it means nothing
    return {"name": "bytes"} if dtype.itemsize == 1 else {"name": "bytes", "configuration": {"endian": "little"}}


# Chunk keys "c.0.0" rather than "c/0/0": the shard files sit in the array's own folder, so an object is three
# folders instead of six, and every folder made is one more create and one more fsync per object (bench/RESULTS.md,
# 2026-12-04). Both are zarr's "default" encoding; objects written with "/" (2026-12-02 to 2026-12-04) still read.
SEPARATOR = "."
SEPARATORS = (".", "/")  # what the direct reader understands


def shard_key(ndim: int, s: int, separator: str) -> str:
    """The file of time shard ``s`` (chunk key encoding "default"): c.<channel shard>.<time shard> for 2-D arrays
    (every channel in one shard), c.<time shard> for 1-D; with "/" as the separator for objects written so."""
    return separator.join(("c", "0", str(s)) if ndim == 2 else ("c", str(s)))


def _with_crc(payload) -> bytes:
    import google_crc32c

    payload = bytes(payload)
    return payload + google_crc32c.value(payload).to_bytes(4, "little")


def encode_array(data: np.ndarray, chunk: int, shard: int, blosc: dict,
                 dimension_names: tuple[str, ...]) -> dict[str, bytes]:
    """The files of a Zarr v3 array (``zarr.json`` and ``c.0.<s>`` or ``c.<s>`` shards, by path relative to the array's folder)
    holding ``data`` (1-D, or 2-D with every channel in each chunk), sharded along its last axis: ``shard``
    samples per shard, inner chunks of ``chunk`` samples encoded ``bytes → blosc → crc32c``, the shard index
    ``bytes → crc32c`` at the end; the fill value is 0. As zarr-python does (``write_empty_chunks`` off), an inner
    chunk whose bytes are all those of the fill value (zeros; -0.0 is not) is not stored, and a shard with none
    stored is no file."""
    import numcodecs.blosc

    data = np.asarray(data)
    if data.ndim not in (1, 2) or shard % chunk or data.dtype.name not in _DTYPES:
        raise ValueError(f"not a layout this writer knows: {data.shape} {data.dtype}, chunk {chunk}, shard {shard}")
    dtype = np.dtype(_DTYPES[data.dtype.name])
    lead, n = data.shape[:-1], data.shape[-1]
    separator = SEPARATOR  # read at call time: tests write the 2026-12-02 layout ("/") by setting it
    files = {"zarr.json": _array_metadata(data.shape, data.dtype.name, chunk, shard, tuple(sorted(blosc.items())),
                                          tuple(dimension_names), separator)}
    per_shard = shard // chunk
    for s in range(-(-n // shard)):
        index = np.full((per_shard, 2), _EMPTY, dtype="<u8")
        parts, offset = [], 0
        for i in range(per_shard):
            a = s * shard + i * chunk
            if a >= n:
                break
            block = np.ascontiguousarray(data[..., a:a + chunk], dtype=dtype)
            if block.shape[-1] < chunk:  # the array's last chunk: padded with the fill value to its whole shape
                block = np.concatenate([block, np.zeros((*lead, chunk - block.shape[-1]), dtype)], axis=-1)
            if not block.view(np.uint8).any():
                continue
            encoded = _with_crc(numcodecs.blosc.compress(block, blosc["cname"].encode(), blosc["clevel"],
                                                         _SHUFFLES[blosc["shuffle"]], 0, dtype.itemsize))
            index[i] = (offset, len(encoded))
            parts.append(encoded)
            offset += len(encoded)
        if parts:
            parts.append(_with_crc(index.tobytes()))
            files[shard_key(data.ndim, s, separator)] = b"".join(parts)
    return files


@lru_cache(maxsize=256)
def _array_metadata(shape: tuple[int, ...], dtype_name: str, chunk: int, shard: int, blosc: tuple,
                    dimension_names: tuple[str, ...], separator: str) -> bytes:
    """An array's ``zarr.json`` (cached: recordings of one length share it, and zarr-python's indented JSON is
    encoded in pure Python, ~0.3 ms a document)."""
    dtype, blosc = np.dtype(_DTYPES[dtype_name]), dict(blosc)
    lead = list(shape[:-1])
    config = {"typesize": dtype.itemsize, "cname": blosc["cname"], "clevel": blosc["clevel"],
              "shuffle": blosc["shuffle"], "blocksize": 0}
    return metadata_bytes({
        "shape": list(shape), "data_type": dtype_name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [*lead, shard]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": separator}},
        "fill_value": 0.0 if dtype.kind == "f" else 0,
        "codecs": [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [*lead, chunk],
            "codecs": [_bytes_codec(dtype), {"name": "blosc", "configuration": config}, {"name": "crc32c"}],
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
            "index_location": "end"}}],
        "attributes": {}, "dimension_names": list(dimension_names), "zarr_format": 3, "node_type": "array",
        "storage_transformers": []})


class DamagedChunk(OSError):
    """A chunk or shard index whose CRC32C does not match: the file is damaged (``verify`` names it)."""


def _little_bytes(codec: dict) -> bool:
    return codec.get("name") == "bytes" and (codec.get("configuration") or {}).get("endian", "little") == "little"


def _crc_ok(raw: np.ndarray) -> bool:
    """Whether bytes that end in a little-endian CRC32C of the rest (zarr's ``crc32c`` codec) are intact."""
    import google_crc32c

    return len(raw) >= 4 and google_crc32c.value(raw[:-4]) == int.from_bytes(raw[-4:].tobytes(), "little")


@dataclass(frozen=True)
class ShardedArray:
    """One array of an object, sharded along its last axis (time) with every channel in each chunk."""

    folder: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    fill_value: float
    shard: int  # samples per shard
    chunk: int  # samples per inner chunk
    separator: str  # of its chunk keys: "." (ingest since 2026-12-04) or "/"
    _maps: dict = field(default_factory=dict, compare=False, repr=False)  # shard -> (mapped bytes, index) or None

    @classmethod
    def open(cls, folder: Path) -> ShardedArray | None:
        """The array in ``folder`` when its metadata is the layout this module reads, else None."""
        try:
            meta = json.loads((folder / "zarr.json").read_bytes())
        except (OSError, ValueError):
            return None
        try:
            return cls._from_metadata(folder, meta)
        except (KeyError, TypeError, ValueError, IndexError):
            return None

    @classmethod
    def _from_metadata(cls, folder: Path, meta: dict) -> ShardedArray | None:
        shape = tuple(int(n) for n in meta["shape"])
        codecs = meta["codecs"]
        if (meta.get("zarr_format") != 3 or meta.get("node_type") != "array" or meta.get("storage_transformers")
                or meta["data_type"] not in _DTYPES or len(shape) not in (1, 2) or len(codecs) != 1
                or meta["chunk_grid"]["name"] != "regular"
                or meta["chunk_key_encoding"]["name"] != "default"
                or meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/") not in SEPARATORS
                or codecs[0]["name"] != "sharding_indexed"):
            return None
        conf = codecs[0]["configuration"]
        inner, index = conf["codecs"], conf["index_codecs"]
        if (conf.get("index_location", "end") != "end" or len(inner) != 3 or not _little_bytes(inner[0])
                or inner[1]["name"] != "blosc" or inner[2]["name"] != "crc32c"
                or len(index) != 2 or not _little_bytes(index[0]) or index[1]["name"] != "crc32c"):
            return None
        shard = [int(n) for n in meta["chunk_grid"]["configuration"]["chunk_shape"]]
        chunk = [int(n) for n in conf["chunk_shape"]]
        if len(shape) == 2 and not (shard[0] == chunk[0] == shape[0]):
            return None  # channels split over chunks: not a layout ingest writes
        if shard[-1] % chunk[-1]:
            return None
        fill = meta["fill_value"]
        if not isinstance(fill, int | float):
            return None  # "NaN" and friends: not what ingest writes
        separator = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
        return cls(folder, shape, np.dtype(_DTYPES[meta["data_type"]]), fill, shard[-1], chunk[-1], separator)

    @property
    def per_shard(self) -> int:
        return self.shard // self.chunk

    def _shard_path(self, s: int) -> Path:
        return self.folder / shard_key(len(self.shape), s, self.separator)

    def _shard(self, s: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Shard ``s``: its file's bytes, mapped read-only, and its index (``(offset, nbytes)`` per inner chunk,
        CRC32C-checked, every range inside the file), opened once per array and process; None for a shard never
        written. Objects are immutable (replaced by rename, never rewritten in place), so a map stays valid; reading
        from it copies nothing into Python, where a ``pread`` per window copied ~1 MB."""
        got = self._maps.get(s)
        if got is not None or s in self._maps:
            return got
        path = self._shard_path(s)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # a shard never written: all fill value
            self._maps[s] = None
            return None
        nbytes = self.per_shard * 16 + 4
        try:
            size = os.fstat(fd).st_size
            data = np.frombuffer(mmap.mmap(fd, size, access=mmap.ACCESS_READ), np.uint8) if size >= nbytes else None
        finally:
            os.close(fd)
        if data is None or not _crc_ok(data[size - nbytes:]):
            raise DamagedChunk(f"{path}: the shard index fails its CRC32C (the file is damaged or cut short)")
        index = data[size - nbytes:-4].view("<u8").reshape(self.per_shard, 2)
        written = ~((index[:, 0] == _EMPTY) & (index[:, 1] == _EMPTY))
        if np.any(index[written, 0] + index[written, 1] > size - nbytes):
            raise DamagedChunk(f"{path}: the shard index points past the end of the file (the file is cut short)")
        self._maps[s] = (data, index)
        return data, index

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """``array[..., start:stop]`` (numpy slice semantics on the last axis), decoded into ``out`` when given (an
        array of exactly that shape and this array's dtype: a row of a shared batch buffer)."""
        n = self.shape[-1]
        lo, hi = max(0, min(start, n)), max(0, min(stop, n))
        hi = max(lo, hi)
        shape = (*self.shape[:-1], hi - lo)
        if out is None:
            out = np.empty(shape, dtype=self.dtype)
        elif out.shape != shape or out.dtype != self.dtype:
            raise ValueError(f"{self.folder}: [{start}:{stop}] is {shape} {self.dtype}, not the {out.shape} {out.dtype} "
                             "it was to be read into")
        if hi == lo:
            return out
        first, last = lo // self.chunk, (hi - 1) // self.chunk
        for s in range(first // self.per_shard, last // self.per_shard + 1):
            j0, j1 = max(first, s * self.per_shard), min(last, (s + 1) * self.per_shard - 1)
            shard = self._shard(s)
            if shard is None:
                out[..., max(lo, j0 * self.chunk) - lo:min(hi, (j1 + 1) * self.chunk) - lo] = self.fill_value
                continue
            data, index = shard
            self._read_chunks(data, index[j0 - s * self.per_shard:j1 - s * self.per_shard + 1], s, j0, lo, hi, out)
        return out

    def _read_chunks(self, data: np.ndarray, rows: np.ndarray, s: int, j0: int, lo: int, hi: int, out: np.ndarray):
        """Inner chunks ``j0, j0 + 1, ...`` of shard ``s`` (``data``; their ``rows`` of its index) into their part
        of ``out``."""
        import numcodecs.blosc

        decoded = np.empty((*self.shape[:-1], self.chunk), dtype=self.dtype)
        threads, numcodecs.blosc.use_threads = numcodecs.blosc.use_threads, False  # one core, no thread pool
        try:
            for i, (offset, length) in enumerate(rows.tolist()):
                j = j0 + i
                a, b = max(lo, j * self.chunk), min(hi, (j + 1) * self.chunk)
                if offset == length == int(_EMPTY):
                    out[..., a - lo:b - lo] = self.fill_value
                    continue
                raw = data[offset:offset + length]
                if not _crc_ok(raw):
                    raise DamagedChunk(f"{self._shard_path(s)}: inner chunk {j % self.per_shard} fails its CRC32C "
                                       "(the file is damaged)")
                if int.from_bytes(raw[4:8].tobytes(), "little") != decoded.nbytes:  # the Blosc header's size
                    raise DamagedChunk(f"{self._shard_path(s)}: inner chunk {j % self.per_shard} decodes to the "
                                       "wrong size")
                numcodecs.blosc.decompress(raw[:-4], decoded)
                out[..., a - lo:b - lo] = decoded[..., a - j * self.chunk:b - j * self.chunk]
        finally:
            numcodecs.blosc.use_threads = threads
