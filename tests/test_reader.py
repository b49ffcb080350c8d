"""The window reader: every backend returns zarr-python's bytes exactly; the fallback works without the optional
libraries; the objects stay standard Zarr v3 that plain zarr-python reads."""

from __future__ import annotations

import json
import multiprocessing
import sys

import numpy as np
import pytest
import zarr

from eegcache.store import LABEL_CHUNK, SIGNAL_CHUNK, LocalObjectStore, ObjectStore
from eegcache.store.reader import BACKENDS, WindowReader, available_backends, choose_backend

N = 3 * SIGNAL_CHUNK + 1234  # three full signal chunks and a partial one; labels: one full chunk and a partial one
WINDOW = 15360  # 60 s at 256 Hz


def _object(rng: np.random.Generator, n: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    signal = rng.standard_normal((19, n)).astype(dtype)
    labels = np.zeros(n, np.uint8)
    for start in rng.integers(0, n, 6):
        labels[start : start + int(rng.integers(1, 5000))] = 1
    return signal, labels


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[ObjectStore, dict[str, tuple[np.ndarray, np.ndarray]]]:
    root = tmp_path_factory.mktemp("reader")
    rng = np.random.default_rng(15)
    store = LocalObjectStore(root)
    written = {}
    for key, n, dtype in (("ab" + "0" * 62, N, "float32"), ("cd" + "1" * 62, WINDOW + 7, "float16"),
                          ("ef" + "2" * 62, LABEL_CHUNK + 5, "float32")):
        written[key] = _object(rng, n, dtype)
        assert store.write(key, *written[key], {"n_samples": n})
    return store, written


def _windows(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    """Random windows plus the awkward ones: straddling each chunk boundary, the tail, past the end, empty."""
    out = [(int(s), int(s) + WINDOW) for s in rng.integers(0, max(1, n - WINDOW), 25)]
    for edge in range(SIGNAL_CHUNK, n, SIGNAL_CHUNK):
        out += [(edge - 1, edge - 1 + WINDOW), (edge - WINDOW // 2, edge + WINDOW // 2), (edge, edge + WINDOW)]
    out += [(n - WINDOW, n), (n - 10, n + 500), (0, n), (n, n + 10), (5, 5), (LABEL_CHUNK - 3, LABEL_CHUNK + 3)]
    return [(a, b) for a, b in out if a >= 0]


def _truth(store: ObjectStore, key: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    group = zarr.open_group(store.path(key), mode="r")  # plain zarr-python, default codec pipeline
    return np.asarray(group["signal"][:, start:stop]), np.asarray(group["labels"][start:stop])


def _same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    for g, w in zip(got, want, strict=True):
        assert isinstance(g, np.ndarray) and g.dtype == w.dtype and g.shape == w.shape
        assert g.tobytes() == w.tobytes()


def test_dev_install_has_every_backend() -> None:
    """The dev extra includes the fast extra, so the tests below cover every read path, not only the fallback."""
    assert available_backends() == list(BACKENDS)
    assert choose_backend() == "tensorstore"


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_bytes_equal_zarr_python(store, backend: str) -> None:
    if backend not in available_backends():
        pytest.skip(f"{backend} not installed")
    st, written = store
    rng = np.random.default_rng([15, BACKENDS.index(backend)])
    reader = st.reader(backend)
    assert reader.backend == backend
    for key, (signal, labels) in written.items():
        n = labels.size
        assert reader.shape(key) == signal.shape
        windows = _windows(rng, n)
        for start, stop in windows:
            got = reader.read(key, start, stop)
            _same(got, _truth(st, key, start, stop))
            _same(got, (signal[:, start:stop], labels[start:stop]))  # and what was written
        batch = reader.read_many([(key, a, b) for a, b in windows])
        for got, (a, b) in zip(batch, windows, strict=True):
            _same(got, _truth(st, key, a, b))


def test_fallback_without_the_optional_libraries(store, monkeypatch) -> None:
    """With tensorstore and zarrs unimportable, auto picks zarr-python, and reads still equal zarr-python's."""
    monkeypatch.setitem(sys.modules, "tensorstore", None)  # `import tensorstore` now raises ImportError
    monkeypatch.setitem(sys.modules, "zarrs", None)
    assert available_backends() == ["zarr"] and choose_backend() == "zarr"
    with pytest.raises(ImportError, match="tensorstore"):
        choose_backend("tensorstore")
    st, written = store
    reader = st.reader()
    assert reader.backend == "zarr"
    key = next(iter(written))
    for start, stop in _windows(np.random.default_rng(1), written[key][1].size):
        _same(reader.read(key, start, stop), _truth(st, key, start, stop))


def test_a_backend_is_chosen_by_name_and_never_by_the_environment(store, monkeypatch) -> None:
    """The library takes the backend as an argument; $EEGCACHE_READER is the trainer CLI's business only."""
    st, _ = store
    monkeypatch.setenv("EEGCACHE_READER", "h5py")  # ignored by the library
    assert st.reader().backend == available_backends()[0]
    assert st.reader("zarr").backend == "zarr"
    assert st.reader("auto").backend == available_backends()[0]
    with pytest.raises(ValueError, match="unknown window reader"):
        st.reader("h5py")


def test_trainer_dataset_reads_through_the_reader_with_and_without_fast(store, monkeypatch) -> None:
    """WindowDataset's items (one by one and as a batch) are the stored slices on the fast path and the fallback."""
    from trainer.data import WindowDataset

    st, written = store
    key = next(iter(written))
    ds = WindowDataset.__new__(WindowDataset)  # no index needed: give the locations by hand
    starts = np.array([0, SIGNAL_CHUNK - 100, N - WINDOW], np.int64)
    for backend in available_backends():
        ds._setup(np.arange(3), [key], np.zeros(3, np.int32), starts, WINDOW, (st.root, None), None, backend)
        batch = ds.__getitems__([0, 1, 2])
        for i, start in enumerate(starts.tolist()):
            want = _truth(st, key, start, start + WINDOW)
            for got in (ds[i], batch[i]):
                assert np.array_equal(got[0].numpy(), want[0]) and np.array_equal(got[1].numpy(), want[1].astype(np.float32))
        assert ds.reader.backend == backend


def _child_read(reader: WindowReader, key: str, start: int, stop: int, conn) -> None:
    signal, labels = reader.read(key, start, stop)
    conn.send((reader.backend, signal.tobytes(), labels.tobytes()))


@pytest.mark.parametrize("started", [("tensorstore",), ("zarrs", "tensorstore")], ids=["tensorstore", "zarrs+tensorstore"])
def test_forked_child_of_a_process_running_a_fast_backend_reads_the_same(store, started) -> None:
    """Neither tensorstore nor zarrs is fork-safe once started (a forked child hangs in their thread pools): a forked
    child reads through a backend its parent has not started, zarr-python at worst, and gets the same bytes."""
    if not set(started) <= set(available_backends()):
        pytest.skip("fast backends not installed")
    st, written = store
    key = next(iter(written))
    for backend in started:
        reader = st.reader(backend)
        reader.read(key, 0, 10)  # the parent has started this backend's threads
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_read, args=(reader, key, 100, 100 + WINDOW, send))
    child.start()
    answered = receive.poll(120)
    got = receive.recv() if answered else None  # before the join: the child blocks until its answer is read
    if not answered:
        child.kill()
    child.join(30)
    assert answered and child.exitcode == 0, "the forked child hung or failed"
    backend, signal, labels = got
    assert backend not in started
    want = _truth(st, key, 100, 100 + WINDOW)
    assert signal == want[0].tobytes() and labels == want[1].tobytes()


def test_objects_are_standard_zarr_v3(store) -> None:
    """Plain zarr-python (default pipeline, no eegcache code) reads every object whole; the metadata is Zarr v3 with
    the codecs the docs name; xarray reads it through zarr when installed."""
    st, written = store
    for key, (signal, labels) in written.items():
        folder = st.path(key)
        meta = json.loads((folder / "signal" / "zarr.json").read_text())
        assert meta["zarr_format"] == 3 and meta["node_type"] == "array"
        assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc", "crc32c"]
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [signal.shape[0], SIGNAL_CHUNK]
        assert json.loads((folder / "zarr.json").read_text())["zarr_format"] == 3
        group = zarr.open_group(str(folder), mode="r", zarr_format=3)
        assert np.array_equal(group["signal"][...], signal) and np.array_equal(group["labels"][...], labels)
    xr = pytest.importorskip("xarray")
    ds = xr.open_zarr(str(st.path(next(iter(written)))), consolidated=False, zarr_format=3)
    assert ds["signal"].dims == ("channel", "time")

