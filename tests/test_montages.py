"""Montages (issue 11): every montage on synthetic referential and bipolar EDF files against channels computed by
hand from the file's own signals (read here with pyedflib by label, never through the library's matching)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyedflib
import pytest
from edf_factory import Channel, Rec, query, run_cli, tone, write_edf, write_rec, write_tree
from hypothesis import given, settings
from hypothesis import strategies as st

from eegcache.pipeline.montage import DOUBLE_BANANA, TCP, MontageError, plan
from eegcache.pipeline.spec import SZCORE_CHANNELS
from eegcache.sources.edf import EdfError, read_recording

SYN = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}


def signals(path: Path) -> dict[str, np.ndarray]:
    with pyedflib.EdfReader(str(path)) as f:
        return {f.getLabel(i): f.readSignal(i) for i in range(f.signals_in_file) if f.getSampleFrequency(i) > 1}


def tusz_label(name: str, ref: str) -> str:
    return f"EEG {name.upper()}-{ref}"


# --- on files ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("montage_folder, ref", [("01_tcp_ar", "REF"), ("02_tcp_le", "LE")])
def test_every_montage_on_a_referential_tusz_file(tmp_path: Path, montage_folder: str, ref: str) -> None:
    rec = Rec("train", "aaaaaaaa", 1, 2003, montage_folder, 0, fs=250, duration_s=20, seed=3, synonyms=True)
    edf = write_rec(tmp_path, rec)
    sig = signals(edf)

    def e(name: str) -> np.ndarray:  # by label, as written (the file spells T3 as T7 etc.)
        return sig[tusz_label(SYN.get(name.upper(), name.upper()), ref)]

    ref_data = np.stack([e(n) for n in SZCORE_CHANNELS])
    got = read_recording(edf, SZCORE_CHANNELS, montage="referential")
    assert got.names == SZCORE_CHANNELS and np.array_equal(got.data, ref_data)  # C3, not the C3P decoy
    avg = read_recording(edf, SZCORE_CHANNELS, montage="average")
    np.testing.assert_allclose(avg.data, ref_data - ref_data.mean(axis=0), atol=1e-9)
    banana = read_recording(edf, SZCORE_CHANNELS, montage="double-banana")
    assert banana.names[:2] == ("Fp1-F7", "F7-T3") and len(banana.names) == 18
    np.testing.assert_allclose(banana.data, np.stack([e(a) - e(b) for a, b in DOUBLE_BANANA]), atol=1e-9)
    tcp = read_recording(edf, SZCORE_CHANNELS, montage="tcp")
    assert len(tcp.names) == 22 and tcp.names[8] == "A1-T3"
    np.testing.assert_allclose(tcp.data, np.stack([e(a) - e(b) for a, b in TCP]), atol=1e-9)


def test_tcp_without_ear_electrodes_has_twenty_channels(tmp_path: Path) -> None:
    edf = write_rec(tmp_path, Rec("dev", "aaaaaaab", 1, 2010, "03_tcp_ar_a", 0, fs=256, duration_s=10, seed=4))
    tcp = read_recording(edf, SZCORE_CHANNELS, montage="tcp")
    assert len(tcp.names) == 20 and not any("A1" in n or "A2" in n for n in tcp.names)


def test_missing_electrodes_under_bipolar_montages(tmp_path: Path) -> None:
    edf = write_rec(tmp_path, Rec("train", "aaaaaaad", 1, 2004, "01_tcp_ar", 0, duration_s=10, missing=("FZ", "PZ")))
    with pytest.raises(EdfError, match=r"cannot make Fz-Cz \(no Fz\), Cz-Pz \(no Pz\)"):
        read_recording(edf, SZCORE_CHANNELS, montage="double-banana")
    filled = read_recording(edf, SZCORE_CHANNELS, "zero", montage="double-banana")
    assert filled.filled == ("Fz-Cz", "Cz-Pz") and not filled.data[16:].any() and filled.data[:16].any()
    with pytest.raises(EdfError, match=r"missing required electrode\(s\) Fz, Pz"):
        read_recording(edf, SZCORE_CHANNELS, montage="average")
    avg = read_recording(edf, SZCORE_CHANNELS, "zero", montage="average")
    sig = signals(edf)
    present = [n for n in SZCORE_CHANNELS if n not in ("Fz", "Pz")]
    rows = np.stack([sig[tusz_label(n, "REF")] for n in present])
    np.testing.assert_allclose(avg.data[[SZCORE_CHANNELS.index(n) for n in present]], rows - rows.mean(axis=0),
                               atol=1e-9)  # the average of the electrodes present; the filled ones stay zero
    assert not avg.data[SZCORE_CHANNELS.index("Fz")].any()


CHB = ("FP1-F7", "F7-T7", "T7-P7", "P7-O1", "FP1-F3", "F3-C3", "C3-P3", "P3-O1", "FP2-F4", "F4-C4", "C4-P4",
       "P4-O2", "FP2-F8", "F8-T8", "T8-P8-0", "P8-O2", "FZ-CZ", "CZ-PZ", "T8-P8-1")  # fmt: skip  (CHB-MIT's labels)


def chbmit_file(path: Path, duration_s: int = 10) -> Path:
    rng = np.random.default_rng(0)
    order = list(CHB)
    rng.shuffle(order)
    channels = [Channel(label, 256, tone(2.0 + i, 256, duration_s, phase=rng.uniform(0, 6)))
                for i, label in enumerate(order)]
    return write_edf(path, [*channels, Channel("ECG", 256, tone(50.0, 256, duration_s))])


def test_bipolar_files_are_taken_as_stored(tmp_path: Path) -> None:
    edf = chbmit_file(tmp_path / "chb01_03.edf")
    sig = signals(edf)
    banana = read_recording(edf, SZCORE_CHANNELS, montage="double-banana")
    stored = {"F7-T3": "F7-T7", "T3-T5": "T7-P7", "T5-O1": "P7-O1", "F8-T4": "F8-T8", "T4-T6": "T8-P8-0",
              "T6-O2": "P8-O2"}
    expected = [sig[stored.get(f"{a}-{b}", f"{a}-{b}".upper())] for a, b in DOUBLE_BANANA]
    assert np.array_equal(banana.data, np.stack(expected))
    for montage in ("referential", "average"):
        with pytest.raises(EdfError, match="needs referential electrodes, but the file holds bipolar channels only"):
            read_recording(edf, SZCORE_CHANNELS, montage=montage)
    with pytest.raises(EdfError, match=r"montage 'tcp': cannot make T3-C3 \(no T3 or C3\)"):
        read_recording(edf, SZCORE_CHANNELS, montage="tcp")


def test_ingest_with_a_montage_is_another_key_and_keeps_default_keys(tmp_path: Path) -> None:
    tree = tmp_path / "tusz"
    write_tree(tree, [Rec("train", "aaaaaaaa", 1, 2003, "01_tcp_ar", 0, duration_s=70, events=((5.0, 25.0),)),
                      Rec("train", "aaaaaaab", 1, 2003, "03_tcp_ar_a", 0, duration_s=70, seed=2)])
    cache = tmp_path / "cache"
    assert run_cli("ingest", tree, "--cache", cache, "--quiet").returncode == 0
    default = query(cache, "SELECT object_key FROM recordings ORDER BY name")
    done = run_cli("ingest", tree, "--cache", cache, "--quiet", "--json", "--montage", "tcp", "--pipeline", "tcp")
    assert done.returncode == 0, done.stderr
    rows = query(cache, "SELECT r.name, o.n_channels, o.spec_json FROM recordings r JOIN objects o "
                        "ON o.key = r.object_key JOIN pipelines p ON p.id = r.pipeline_id WHERE p.name = 'tcp' "
                        "ORDER BY r.name")
    assert [(n, c, json.loads(s)["montage"]) for n, c, s in rows] == [("aaaaaaaa_s001_t000", 22, "tcp"),
                                                                     ("aaaaaaab_s001_t000", 20, "tcp")]
    assert query(cache, "SELECT object_key FROM recordings r JOIN pipelines p ON p.id = r.pipeline_id "
                        "WHERE p.name = 'default' ORDER BY r.name") == default
    assert all("montage" not in json.loads(s) for (s,) in query(
        cache, "SELECT spec_json FROM pipelines WHERE name = 'default'"))


# --- the matching rule, on label lists ---------------------------------------------------------------------------

SUFFIXES = ("-REF", "-LE", "-Avg", "", "-ref", "-avg")


@settings(max_examples=150, deadline=None)
@given(st.permutations(list(SZCORE_CHANNELS) + ["C3P", "EKG1", "A1", "T1"]), st.data())
def test_referential_matching_is_by_token_whatever_the_suffix(names: list[str], data) -> None:
    """Any order, any reference suffix in any case, with or without 'EEG ', T7/T8/P7/P8 synonyms: each electrode is
    found at its own label, never at the decoy C3P; double-banana rows subtract exactly the right two."""
    labels = []
    for name in names:
        token = SYN.get(name, name) if data.draw(st.booleans()) else name
        token = token.upper() if data.draw(st.booleans()) else token
        prefix = "EEG " if data.draw(st.booleans()) else ""
        labels.append(prefix + token + data.draw(st.sampled_from(SUFFIXES)))
    ref = plan(labels, "referential", SZCORE_CHANNELS)
    picked = [ref.sources[int(np.flatnonzero(row)[0])] for row in ref.matrix]
    assert [names[i] for i in picked] == list(SZCORE_CHANNELS)
    banana = plan(labels, "double-banana", SZCORE_CHANNELS)
    for row, (a, b) in zip(banana.matrix, DOUBLE_BANANA, strict=True):
        plus, minus = (banana.sources[int(np.flatnonzero(row == v)[0])] for v in (1.0, -1.0))
        assert (names[plus], names[minus]) == (a, b)
    avg = plan(labels, "average", SZCORE_CHANNELS)
    np.testing.assert_allclose(avg.matrix.sum(axis=1), 0.0, atol=1e-12)


def test_plan_refusals() -> None:
    with pytest.raises(MontageError, match="none of the required electrodes"):
        plan(["ECG", "EEG C3P-REF"], "referential", SZCORE_CHANNELS)
    with pytest.raises(MontageError, match="none of its channels is stored or derivable"):
        plan(["ECG"], "double-banana", SZCORE_CHANNELS)
    assert plan(["C3-REF", "C3P-REF"], "referential", ("C3",)).sources == (0,)
