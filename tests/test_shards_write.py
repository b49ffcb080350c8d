"""The object writer (``eegcache.store.shards.encode_array``, ``layout.write_group``) against zarr-python: the same
arrays and codecs written by zarr-python give the same files, byte for byte, and zarr-python reads ours back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import OVERLAP, SHORT, SYNONYMS_CSV, TSE_512
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, Crc32cCodec

import eegcache.store.layout
from eegcache.ops.ingest import ingest
from eegcache.pipeline.spec import IngestConfig
from eegcache.store import LocalObjectStore
from eegcache.store.layout import LABEL_BLOSC, LABEL_CHUNK, SIGNAL_BLOSC, SIGNAL_CHUNK, shard_samples, write_group
from eegcache.store.shards import encode_array


def files_below(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def zarr_python_array(group: zarr.Group, name: str, values: np.ndarray, chunk: int, shard: int, blosc: dict,
                      dims: tuple[str, ...]) -> zarr.Array:
    """The array as zarr-python writes it with the layout's codecs: the reference the writer must match."""
    lead = values.shape[:-1]
    array = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=(*lead, chunk),
                               shards=(*lead, shard), compressors=[BloscCodec(**blosc), Crc32cCodec()],
                               dimension_names=dims, chunk_key_encoding={"name": "default", "separator": "."})
    array[...] = values
    return array


def zarr_python_group(folder: Path, signal: np.ndarray, labels: np.ndarray, attrs: dict) -> None:
    group = zarr.open_group(str(folder), mode="w", zarr_format=3, attributes=attrs)
    zarr_python_array(group, "signal", signal, SIGNAL_CHUNK, shard_samples(signal.shape[-1], SIGNAL_CHUNK),
                      SIGNAL_BLOSC, ("channel", "time"))
    zarr_python_array(group, "labels", labels, LABEL_CHUNK, shard_samples(labels.shape[-1], LABEL_CHUNK),
                      LABEL_BLOSC, ("time",))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), channels=st.integers(1, 3), chunk=st.sampled_from([8, 32, 100]),
       per_shard=st.integers(1, 4), n=st.integers(1, 900), dtype=st.sampled_from(["float32", "float16", "uint8"]))
def test_encoded_arrays_are_the_bytes_zarr_python_writes(tmp_path_factory, data, channels, chunk, per_shard, n,
                                                         dtype) -> None:
    """Any length, inner chunk and shard size, 1-D or 2-D, with runs of zeros (inner chunks and whole shards that
    are not stored, a partial last chunk padded with the fill value), -0.0 among them: the same file names and
    bytes as zarr-python's, and zarr-python reads the values back."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    values = (rng.integers(0, 3, (channels, n)) if dtype == "uint8" else rng.standard_normal((channels, n)))
    values = values.astype(dtype)
    for _ in range(data.draw(st.integers(0, 3))):
        a = data.draw(st.integers(0, n - 1))
        values[:, a:a + data.draw(st.integers(1, 4 * chunk * per_shard))] = data.draw(st.sampled_from([0.0, -0.0]))
    if channels == 1 and data.draw(st.booleans()):
        values = values[0]
    blosc = LABEL_BLOSC if dtype == "uint8" else SIGNAL_BLOSC
    dims = ("time",) if values.ndim == 1 else ("channel", "time")
    tmp = tmp_path_factory.mktemp("enc")
    array = zarr_python_array(zarr.open_group(str(tmp), mode="w", zarr_format=3), "a", values, chunk,
                              chunk * per_shard, blosc, dims)
    ours = encode_array(values, chunk, chunk * per_shard, blosc, dims)
    theirs = files_below(tmp / "a")
    assert sorted(ours) == sorted(theirs)
    assert all(ours[name] == theirs[name] for name in ours)
    assert np.array_equal(np.asarray(array[...]), values)


def test_an_ingested_object_is_the_group_zarr_python_writes(tree, tmp_path: Path, monkeypatch) -> None:
    """Every file of objects ingest made from real EDFs (attributes, the signal in several shards, the labels with
    and without seizures) equals what zarr-python writes for the same values and attributes; the checksums
    ``write_group`` returns are those of the files on disk."""
    monkeypatch.setattr(eegcache.store.layout, "SHARD_SAMPLES", 2 * LABEL_CHUNK)  # 128 s: several shards
    root, _ = tree(OVERLAP, SYNONYMS_CSV, TSE_512, SHORT)
    cache = tmp_path / "cache"
    ingest(root, cache, IngestConfig(workers=1), progress=False)
    store = LocalObjectStore(cache)
    objects = sorted((cache / "objects").glob("??/*"))
    assert len(objects) >= 3
    seizures = shards = 0
    for folder in objects:
        group = zarr.open_group(str(folder), mode="r")
        signal, labels = np.asarray(group["signal"][...]), np.asarray(group["labels"][...])
        attrs = json.loads((folder / "zarr.json").read_text())["attributes"]
        seizures += bool(labels.any())
        shards = max(shards, len(list((folder / "signal").glob("c.0.*"))))
        reference = tmp_path / "zarr-python" / folder.name
        zarr_python_group(reference, signal, labels, attrs)
        assert files_below(folder) == files_below(reference)
        rewritten = tmp_path / "ours" / folder.name
        checksums = write_group(rewritten, signal, labels, attrs)
        assert files_below(rewritten) == files_below(folder)
        assert checksums == store.checksums(folder.name)
    assert seizures and shards > 1  # label shards were written, not only skipped; signals of several shards


@pytest.mark.parametrize("n", [1, SIGNAL_CHUNK - 1, 3 * LABEL_CHUNK + 5])
def test_write_group_round_trips_through_zarr_python_at_chunk_edges(tmp_path: Path, n: int) -> None:
    """Lengths around the chunk sizes, float16 signal, all-zero labels (no label shard file, read back as zeros)."""
    signal = np.random.default_rng(n).standard_normal((4, n)).astype(np.float16)
    labels = np.zeros(n, np.uint8)
    write_group(tmp_path / "o", signal, labels, {"n": n})
    group = zarr.open_group(str(tmp_path / "o"), mode="r")
    assert group.attrs["n"] == n
    assert np.array_equal(group["signal"][...], signal) and group["signal"].dtype == np.float16
    assert np.array_equal(group["labels"][...], labels)
    assert not list((tmp_path / "o" / "labels").glob("c*"))


def test_the_writer_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a layout"):
        encode_array(np.zeros((2, 2, 2), np.float32), 8, 16, SIGNAL_BLOSC, ("a", "b", "c"))
    with pytest.raises(ValueError, match="not a layout"):
        encode_array(np.zeros(10, np.int64), 8, 16, SIGNAL_BLOSC, ("time",))
    with pytest.raises(ValueError, match="not a layout"):
        encode_array(np.zeros(10, np.float32), 8, 12, SIGNAL_BLOSC, ("time",))
