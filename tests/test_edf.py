"""EDF reading on real files written by pyedflib: header validation, electrode matching by parsed token, values in
µV, the pyedflib → MNE fallback for the ``01:01:85`` start date."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyedflib
import pytest
from edf_factory import (
    ELECTRODE_HZ,
    GAIN_UV,
    SPEC_NAMES,
    SZCORE,
    Channel,
    Rec,
    dominant_hz,
    patch_bytes,
    rec_channels,
    set_start_date,
    tone,
    write_edf,
)
from hypothesis import given
from hypothesis import strategies as st

from eegcache.sources.edf import EdfError, electrode, pick_channels, read_header, read_recording

REC = Rec("train", "aaaaaaaa", 1, 2003, "01_tcp_ar", 0, fs=250, duration_s=20, seed=3)


@pytest.fixture
def edf(tmp_path: Path) -> Path:
    """A 20 s, 250 Hz TUSZ-like file: 21 electrodes, the C3P decoy before C3, EKG and three 1 Hz channels."""
    return write_edf(tmp_path / "rec.edf", rec_channels(REC))


# --- header -----------------------------------------------------------------------------------------------------


def test_header_fields(edf: Path) -> None:
    channels = rec_channels(REC)
    h = read_header(edf)
    assert (h.n_records, h.record_s, h.duration_s) == (20, 1.0, 20.0)
    assert h.labels == tuple(c.label for c in channels)
    assert h.rates == tuple(float(c.fs) for c in channels)
    assert h.rates[-3:] == (1.0, 1.0, 1.0)
    assert h.header_bytes == 256 * (len(channels) + 1)
    assert h.file_size == edf.stat().st_size == h.header_bytes + 20 * sum(c.fs for c in channels) * 2


def test_factory_writes_tusz_style_plain_edf(edf: Path) -> None:
    """The test inputs look like TUSZ files byte for byte where it matters: plain EDF (no EDF+ marker), 1 s
    records, 16-character labels, physical +-4999.84 uV, digital +-32767, TUH's prefilter text."""
    raw = edf.read_bytes()
    ns = int(raw[252:256])

    def column(offset: int, width: int) -> list[str]:
        base = 256 + offset * ns
        return [raw[base + i * width : base + (i + 1) * width].decode("ascii") for i in range(ns)]

    assert raw[:8] == b"0       " and not raw[192:236].strip().startswith(b"EDF+")
    assert float(raw[244:252]) == 1.0
    assert column(0, 16)[0] == "EEG FP1-REF     " and "EEG C3P-REF     " in column(0, 16)
    assert {float(x) for x in column(104, 8)} == {-4999.84} and {float(x) for x in column(112, 8)} == {4999.84}
    assert {int(x) for x in column(120, 8)} == {-32767} and {int(x) for x in column(128, 8)} == {32767}
    assert {x.strip() for x in column(136, 80)} == {"HP:0.000 Hz LP:0.0 Hz N:0.0"}
    assert [int(x) for x in column(216, 8)][-3:] == [1, 1, 1]


def _ns(path: Path) -> int:
    return int(path.read_bytes()[252:256])


def _damage(kind: str, path: Path) -> None:
    ns = _ns(path)
    if kind == "short":
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "not_edf":
        patch_bytes(path, 0, b"GIF89a  ")
    elif kind == "signal_count_text":
        patch_bytes(path, 252, b"x1  ")
    elif kind == "signal_count_zero":
        patch_bytes(path, 252, b"0   ")
    elif kind == "header_size":
        patch_bytes(path, 184, b"512     ")
    elif kind == "header_cut":
        path.write_bytes(path.read_bytes()[: 256 + 100])
    elif kind == "records_text":
        patch_bytes(path, 236, b"many    ")
    elif kind == "records_zero":
        patch_bytes(path, 236, b"0       ")
    elif kind == "records_negative":
        patch_bytes(path, 236, b"-1      ")
    elif kind == "duration_zero":
        patch_bytes(path, 244, b"0       ")
    elif kind == "duration_nan":
        patch_bytes(path, 244, b"nan     ")
    elif kind == "samples_zero":  # samples per record of the first signal
        patch_bytes(path, 256 + ns * (16 + 80 + 8 * 5 + 80), b"0       ")
    elif kind == "non_ascii":
        patch_bytes(path, 256, "EEG FP1-RÉF".encode("latin-1").ljust(16))
        patch_bytes(path, 252, "é".encode("latin-1") + b"   ")
    elif kind == "data_cut":
        path.write_bytes(path.read_bytes()[:-1000])
    else:  # pragma: no cover
        raise AssertionError(kind)


@pytest.mark.parametrize("kind, phrase", [
    ("short", "shorter than the 256-byte header"),
    ("not_edf", "not an EDF file"),
    ("signal_count_text", "signal count"),
    ("signal_count_zero", "signal count 0"),
    ("header_size", "header size 512"),
    ("header_cut", "truncated EDF header"),
    ("records_text", "record count"),
    ("records_zero", "zero-length recording"),
    ("records_negative", "record count -1"),
    ("duration_zero", "record duration"),
    ("duration_nan", "record duration"),
    ("samples_zero", "samples per record"),
    ("non_ascii", "not ASCII"),
    ("data_cut", "truncated EDF"),
])
def test_damaged_headers_are_named(edf: Path, kind: str, phrase: str) -> None:
    """Each damage gives an EdfError whose message starts with the file name and says what is wrong, before any
    reader (which might misread it) touches the file."""
    _damage(kind, edf)
    with pytest.raises(EdfError) as info:
        read_header(edf)
    assert str(info.value).startswith("rec.edf: ") and phrase in str(info.value), str(info.value)
    with pytest.raises(EdfError):
        read_recording(edf, tuple(SPEC_NAMES))


def test_a_directory_named_edf(tmp_path: Path) -> None:
    folder = tmp_path / "odd.edf"
    folder.mkdir()
    with pytest.raises(EdfError, match="odd.edf: is a directory"):
        read_header(folder)


# --- electrode matching ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label, name", [
    ("EEG FP1-REF", "FP1"), ("EEG FP1-LE", "FP1"), ("EEG T7-REF", "T3"), ("EEG T8-LE", "T4"), ("EEG P7-REF", "T5"),
    ("EEG P8-REF", "T6"), ("EEG C3P-REF", "C3P"), ("EEG C3-REF", "C3"), ("EEG EKG1-REF", "EKG1"),
    ("EEG 20-REF", "20"), ("eeg fz-ref", "FZ"), ("EEG CZ-REF      ", "CZ"), ("DC1-DC", None), ("PHOTIC PH", None),
])  # fmt: skip
def test_electrode_by_parsed_token(label: str, name: str | None) -> None:
    assert electrode(label) == name


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=6), st.sampled_from(["REF", "LE"]))
def test_electrode_is_the_whole_token(token: str, ref: str) -> None:
    """The parsed electrode is the whole token (synonyms mapped), never a part of it: C3P is never C3."""
    synonyms = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}
    assert electrode(f"EEG {token}-{ref}") == synonyms.get(token, token)


def test_pick_channels_decoy_synonyms_and_missing() -> None:
    labels = ("EEG C3P-REF", "EEG FP1-REF", "EEG C3-REF", "EEG T7-REF", "EEG T3-REF", "EEG P8-REF", "IBI")
    picks, missing = pick_channels(labels, ("C3", "Fp1", "T3", "T6", "Fz", "T7"))
    assert picks == [2, 1, 4, 5, None, 4]  # exact T3 beats its synonym T7; T6 from P8; the decoy never
    assert missing == ["Fz"]


# --- reading ------------------------------------------------------------------------------------------------------


def _written(rec: Rec) -> dict[str, np.ndarray]:
    return {c.label: np.asarray(c.samples) for c in rec_channels(rec)}


def test_read_recording_values_order_and_rate(edf: Path) -> None:
    """The 19 electrodes in spec order, in µV within one digital step of what was written, at the EEG rate;
    the decoy, EKG and 1 Hz channels are left out."""
    raw = read_recording(edf, tuple(SPEC_NAMES))
    written = _written(REC)
    assert (raw.fs, raw.reader, raw.filled, raw.duration_s) == (250.0, "pyedflib", (), 20.0)
    assert raw.data.shape == (19, 20 * 250)
    for i, name in enumerate(SZCORE):
        np.testing.assert_allclose(raw.data[i], written[f"EEG {name}-REF"], atol=GAIN_UV)
        assert dominant_hz(raw.data[i], 250) == pytest.approx(ELECTRODE_HZ[name], abs=0.1)


def test_missing_electrodes_fail_or_zero_fill(tmp_path: Path) -> None:
    rec = Rec("train", "aaaaaaaa", 1, 2003, "02_tcp_le", 0, fs=256, duration_s=10, missing=("FZ", "PZ"))
    path = write_edf(tmp_path / "m.edf", rec_channels(rec))
    with pytest.raises(EdfError, match=r"m.edf: missing required electrode\(s\) Fz, Pz"):
        read_recording(path, tuple(SPEC_NAMES))
    raw = read_recording(path, tuple(SPEC_NAMES), "zero")
    assert raw.filled == ("Fz", "Pz")
    assert not raw.data[SPEC_NAMES.index("Fz")].any() and not raw.data[SPEC_NAMES.index("Pz")].any()
    assert dominant_hz(raw.data[SPEC_NAMES.index("Cz")], 256) == pytest.approx(ELECTRODE_HZ["CZ"], abs=0.1)


def test_no_required_electrode_at_all(tmp_path: Path) -> None:
    path = write_edf(tmp_path / "aux.edf", [Channel("EEG EKG1-REF", 250, tone(5, 250, 5)), Channel("IBI", 1, np.zeros(5))])
    with pytest.raises(EdfError, match="none of the required electrodes"):
        read_recording(path, tuple(SPEC_NAMES), "zero")


def test_required_electrodes_at_different_rates(tmp_path: Path) -> None:
    channels = [Channel(f"EEG {n}-REF", 500 if n == "O2" else 250, tone(ELECTRODE_HZ[n], 500 if n == "O2" else 250, 4))
                for n in SZCORE]
    path = write_edf(tmp_path / "mixed.edf", channels)
    with pytest.raises(EdfError, match="different sampling rates"):
        read_recording(path, tuple(SPEC_NAMES))


def test_bad_start_date_falls_back_to_mne(edf: Path, tmp_path: Path) -> None:
    """pyedflib refuses '01:01:85'; MNE reads the same samples (in µV, electrodes picked by label)."""
    reference = read_recording(edf, tuple(SPEC_NAMES))
    odd = tmp_path / "odd.edf"
    shutil.copy(edf, odd)
    set_start_date(odd)
    with pytest.raises(OSError, match="startdate"):
        pyedflib.EdfReader(str(odd)).close()
    raw = read_recording(odd, tuple(SPEC_NAMES))
    assert raw.reader == "mne" and raw.fs == reference.fs and raw.data.shape == reference.data.shape
    np.testing.assert_allclose(raw.data, reference.data, atol=GAIN_UV)


def test_mne_fallback_with_a_faster_auxiliary_channel(tmp_path: Path) -> None:
    rec = Rec("eval", "aaaaaaac", 1, 2012, "01_tcp_ar", 0, fs=250, duration_s=20, seed=4,
              extra=(Channel("PHOTIC-REF", 500, tone(3.0, 500, 20)),))
    path = write_edf(tmp_path / "photic.edf", rec_channels(rec))
    reference = read_recording(path, tuple(SPEC_NAMES))
    set_start_date(path)
    raw = read_recording(path, tuple(SPEC_NAMES))
    assert raw.reader == "mne"
    np.testing.assert_allclose(raw.data, reference.data, atol=GAIN_UV)
