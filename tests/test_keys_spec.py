"""Content keys and the preprocessing spec: properties (hypothesis) of the hashing that decides what is reused.

The same spec must always give the same key (or the cache is rebuilt for nothing); any change of any field,
of the EDF bytes, of the labels or of the pipeline version must give another key (or stale data is served)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eegcache.pipeline import keys
from eegcache.pipeline.spec import PreprocessSpec, load_config

ELECTRODES = ("Fp1", "F3", "C3", "P3", "O1", "F7", "T3", "T5", "Fz", "Cz", "Pz",
              "Fp2", "F4", "C4", "P4", "O2", "F8", "T4", "T6")  # fmt: skip
HEX = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@st.composite
def specs(draw) -> PreprocessSpec:
    """Valid specs over every field (floats as floats, the way from_dict and the CLI normalise them)."""
    fs = draw(st.sampled_from([128.0, 200.0, 250.0, 256.0, 400.0, 500.0, 512.0]))
    bandpass = draw(st.one_of(st.none(), st.tuples(st.floats(0.0, 5.0), st.floats(10.0, fs / 2 - 1.0))))
    notch = tuple(draw(st.lists(st.sampled_from([50.0, 60.0, 1.0, 100.0]).filter(lambda f: f < fs / 2),
                                max_size=3, unique=True)))
    channels = tuple(draw(st.lists(st.sampled_from(ELECTRODES), min_size=1, max_size=19, unique=True)))
    zscore = draw(st.booleans())
    return PreprocessSpec(
        fs=fs, channels=channels, bandpass_hz=bandpass, notch_hz=notch, zscore=zscore,
        dtype=draw(st.sampled_from(["float32", "float16"])),
        missing_electrodes=draw(st.sampled_from(["fail", "zero"])),
        montage=draw(st.sampled_from(["referential", "average", "double-banana", "tcp"])),
        mains_notch=draw(st.booleans()),
        resample=draw(st.sampled_from(["poly", "fft"])),
        fixed_notch_hz=draw(st.sampled_from([(), (1.0,)])),
        chain=draw(st.sampled_from(["filter-first", "zscore-first"] if zscore else ["filter-first"])),
        window_filter=draw(st.sampled_from([None, {"bandpass_hz": [0.5, fs / 4], "order": 3, "notch_hz": [1.0]}])),
        compute=draw(st.sampled_from(["float32-fft", "float64"])),
    )


def _changed(spec: PreprocessSpec, field: str, data: st.DataObject) -> PreprocessSpec:
    """The spec with one field changed to another valid value."""
    if field == "fs":
        new = data.draw(st.sampled_from([1000.0, 2048.0, 4096.0]).filter(lambda f: f != spec.fs))
        return dataclasses.replace(spec, fs=new)
    if field == "channels":
        options = [c for c in ELECTRODES if c not in spec.channels]
        if options:
            return dataclasses.replace(spec, channels=(*spec.channels, data.draw(st.sampled_from(options))))
        return dataclasses.replace(spec, channels=spec.channels[::-1] if len(spec.channels) > 1 else ("Cz",))
    if field == "bandpass_hz":
        if spec.bandpass_hz is None:
            return dataclasses.replace(spec, bandpass_hz=(0.5, 40.0))
        low, high = spec.bandpass_hz
        return dataclasses.replace(spec, bandpass_hz=(low, high - 0.25))
    if field == "notch_hz":
        return dataclasses.replace(spec, notch_hz=(*spec.notch_hz, 37.5) if 37.5 not in spec.notch_hz else ())
    if field == "zscore":
        return dataclasses.replace(spec, zscore=not spec.zscore, chain="filter-first")
    if field == "dtype":
        return dataclasses.replace(spec, dtype="float16" if spec.dtype == "float32" else "float32")
    if field == "montage":
        others = [m for m in ("referential", "average", "double-banana", "tcp") if m != spec.montage]
        return dataclasses.replace(spec, montage=data.draw(st.sampled_from(others)))
    if field == "mains_notch":
        return dataclasses.replace(spec, mains_notch=not spec.mains_notch)
    if field == "chain":
        if spec.chain == "zscore-first":
            return dataclasses.replace(spec, chain="filter-first")
        return dataclasses.replace(spec, chain="zscore-first", zscore=True)
    if field == "resample":
        return dataclasses.replace(spec, resample="fft" if spec.resample == "poly" else "poly")
    if field == "fixed_notch_hz":
        return dataclasses.replace(spec, fixed_notch_hz=() if spec.fixed_notch_hz else (1.0,))
    if field == "window_filter":
        return dataclasses.replace(spec, window_filter=None if spec.window_filter else {"bandpass_hz": [0.5, 30.0]})
    if field == "compute":
        return dataclasses.replace(spec, compute="float64" if spec.compute == "float32-fft" else "float32-fft")
    assert field == "missing_electrodes"
    return dataclasses.replace(spec, missing_electrodes="zero" if spec.missing_electrodes == "fail" else "fail")


FIELDS = [f.name for f in dataclasses.fields(PreprocessSpec)]


@given(specs(), HEX, HEX)
def test_same_spec_same_key(spec: PreprocessSpec, edf: str, ann: str) -> None:
    """A spec rebuilt from its dict, or from JSON text, keys exactly like the original."""
    label = keys.label_key(ann)
    again = PreprocessSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.canonical_json() == spec.canonical_json()
    assert keys.object_key(edf, again, label) == keys.object_key(edf, spec, label)
    assert keys.spec_digest(again) == keys.spec_digest(spec)


@given(specs(), st.randoms(use_true_random=False))
def test_canonical_json_ignores_dict_order(spec: PreprocessSpec, rnd) -> None:
    """from_dict of the same settings in any key order gives the same canonical text, digest and key."""
    items = list(spec.to_dict().items())
    rnd.shuffle(items)
    shuffled = PreprocessSpec.from_dict(dict(items))
    assert shuffled.canonical_json() == spec.canonical_json()
    assert keys.spec_digest(shuffled) == keys.spec_digest(spec)
    assert json.loads(spec.canonical_json()) == spec.to_dict()
    assert spec.canonical_json() == json.dumps(spec.to_dict(), sort_keys=True, separators=(",", ":"))


@settings(max_examples=200)
@given(specs(), st.sampled_from(FIELDS), HEX, st.data())
def test_any_field_change_changes_the_key(spec: PreprocessSpec, field: str, edf: str, data: st.DataObject) -> None:
    """Every field is part of the key: change one and the canonical text, the digest and the key all change. The
    read-time ``window_filter`` changes the pipeline's spec and digest but not the stored object's key (the stored
    signal is the same)."""
    other = _changed(spec, field, data)
    assert other != spec
    label = keys.label_key(None)
    assert other.canonical_json() != spec.canonical_json()
    assert keys.spec_digest(other) != keys.spec_digest(spec)
    if field == "window_filter":
        assert keys.object_key(edf, other, label) == keys.object_key(edf, spec, label)
    else:
        assert keys.object_key(edf, other, label) != keys.object_key(edf, spec, label)


def test_new_fields_at_defaults_leave_the_canonical_json_as_before():
    """Fields added later are absent from the canonical JSON at the value they had before they existed (their
    defaults, but compute's: float64): existing keys never change."""
    assert PreprocessSpec(compute="float64").canonical_json() == (
        '{"bandpass_hz":[0.5,120.0],"channels":["Fp1","F3","C3","P3","O1","F7","T3","T5","Fz","Cz","Pz","Fp2","F4",'
        '"C4","P4","O2","F8","T4","T6"],"dtype":"float32","fs":256.0,"missing_electrodes":"fail","notch_hz":[60.0],'
        '"zscore":true}')
    spec = PreprocessSpec(chain="zscore-first", resample="fft", fixed_notch_hz=(1.0,),
                          window_filter={"bandpass_hz": [0.5, 120.0], "order": 3, "notch_hz": [1.0, 60.0]})
    data = json.loads(spec.canonical_json())
    assert data["chain"] == "zscore-first" and data["resample"] == "fft" and data["fixed_notch_hz"] == [1.0]
    assert data["window_filter"] == {"bandpass_hz": [0.5, 120.0], "order": 3, "notch_hz": [1.0, 60.0], "notch_q": 30.0}
    assert PreprocessSpec.from_dict(data) == spec
    with pytest.raises(ValueError, match="needs zscore"):
        PreprocessSpec(chain="zscore-first", zscore=False)
    with pytest.raises(ValueError, match="window_filter"):
        PreprocessSpec(fs=200.0, bandpass_hz=None, window_filter={"bandpass_hz": [0.5, 120.0]})


@given(specs(), HEX, HEX, HEX)
def test_edf_and_label_digests_are_part_of_the_key(spec: PreprocessSpec, edf: str, edf2: str, ann: str) -> None:
    label = keys.label_key(ann)
    if edf != edf2:
        assert keys.object_key(edf, spec, label) != keys.object_key(edf2, spec, label)
    assert keys.object_key(edf, spec, label) != keys.object_key(edf, spec, keys.label_key(ann[::-1] + "x"))
    assert len(keys.object_key(edf, spec, label)) == 64


def test_versions_are_part_of_the_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bumping the pipeline version changes object keys and spec digests; bumping the label rules changes
    label keys (so a label-parser fix re-labels without anyone deleting a cache)."""
    spec, edf = PreprocessSpec(), "0" * 64
    label = keys.label_key("1" * 64)
    before = keys.object_key(edf, spec, label), keys.spec_digest(spec)
    monkeypatch.setattr(keys, "PIPELINE_VERSION", "eegcache-preprocess/999")
    assert keys.object_key(edf, spec, label) != before[0] and keys.spec_digest(spec) != before[1]
    monkeypatch.setattr(keys, "LABEL_RULES_VERSION", "eegcache-labels/999")
    assert keys.label_key("1" * 64) != label


def test_default_key_is_stable() -> None:
    """The default spec's canonical text is pinned: a change here silently changes the keys of every new pipeline
    built with the defaults and must come with a pipeline version bump. (The default became float32-fft when
    ``compute`` was added; pipelines stored before keep their text, read back as float64: see below.)"""
    assert PreprocessSpec().canonical_json() == (
        '{"bandpass_hz":[0.5,120.0],"channels":["Fp1","F3","C3","P3","O1","F7","T3","T5","Fz","Cz","Pz","Fp2",'
        '"F4","C4","P4","O2","F8","T4","T6"],"compute":"float32-fft","dtype":"float32","fs":256.0,'
        '"missing_electrodes":"fail","notch_hz":[60.0],"zscore":true}'
    )


@given(st.sampled_from([250, 256, 500, 512]))
def test_equal_specs_have_equal_keys(fs: int) -> None:
    """Specs that compare equal key equally, whatever numeric type the caller used."""
    a, b = PreprocessSpec(fs=fs, notch_hz=(50,)), PreprocessSpec(fs=float(fs), notch_hz=(50.0,))
    assert a == b
    assert keys.spec_digest(a) == keys.spec_digest(b)


@settings(max_examples=25)
@given(st.sampled_from([0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 7]), st.binary(min_size=1, max_size=64))
def test_file_digest_is_sha256_of_the_bytes(tmp_path_factory, size: int, pattern: bytes) -> None:
    """Streaming in 1 MiB blocks gives sha256 of the whole file, across block boundaries."""
    path = tmp_path_factory.mktemp("digest") / "f.edf"
    data = (pattern * (size // len(pattern) + 1))[:size]
    path.write_bytes(data)
    assert keys.file_digest(path) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("kwargs, phrase", [
    ({"fs": 0.0}, "fs must be positive"),
    ({"channels": ()}, "at least one electrode"),
    ({"bandpass_hz": (0.5, 128.0)}, "bandpass_hz"),
    ({"bandpass_hz": (40.0, 10.0)}, "bandpass_hz"),
    ({"notch_hz": (200.0,)}, "notch frequency"),
    ({"dtype": "float64"}, "dtype"),
    ({"missing_electrodes": "interpolate"}, "missing_electrodes"),
])
def test_invalid_specs_are_refused(kwargs: dict, phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        PreprocessSpec(**kwargs)


def test_from_dict_refuses_unknown_settings() -> None:
    with pytest.raises(ValueError, match="unknown preprocessing setting"):
        PreprocessSpec.from_dict({"fs": 256, "lowpass": 40})


def test_load_config_file_and_overrides(tmp_path: Path) -> None:
    """TOML [preprocess] and top-level window/stride/workers; command-line values win over the file; None
    means not given."""
    path = tmp_path / "c.toml"
    path.write_text('window = 30\nstride = 10\nworkers = 3\n[preprocess]\nfs = 500\nnotch_hz = 50\nzscore = false\n')
    config = load_config(path, {"stride": 5.0, "workers": None, "dtype": "float16", "fs": None})
    assert (config.window_s, config.stride_s, config.workers) == (30.0, 5.0, 3)
    assert config.spec == PreprocessSpec(fs=500.0, notch_hz=(50.0,), zscore=False, dtype="float16")
    assert config.spec.canonical_json() == PreprocessSpec(fs=500.0, notch_hz=(50.0,), zscore=False,
                                                          dtype="float16").canonical_json()
    defaults = load_config(None, {})
    assert (defaults.window_s, defaults.stride_s, defaults.workers, defaults.spec) == (60.0, 60.0, 1, PreprocessSpec())


def test_load_config_refuses_unknown_top_level_settings(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("windows = 30\n")
    with pytest.raises(ValueError, match="unknown setting"):
        load_config(path)


# The default spec's canonical JSON as every release before issue 11 wrote it (migration 0004 holds the same text):
# fields added later (montage, mains_notch) must not enter it at their defaults, or every existing key would change.
PRE_ISSUE_11_DEFAULT_JSON = (
    '{"bandpass_hz":[0.5,120.0],"channels":["Fp1","F3","C3","P3","O1","F7","T3","T5","Fz","Cz","Pz","Fp2","F4",'
    '"C4","P4","O2","F8","T4","T6"],"dtype":"float32","fs":256.0,"missing_electrodes":"fail","notch_hz":[60.0],'
    '"zscore":true}'
)


def test_fields_added_later_keep_existing_keys() -> None:
    """A stored spec's JSON that does not name a later field reads back as the value it had before the field
    existed: compute float64 (not today's default), so an old pipeline keeps its algorithm, text, digest and keys."""
    legacy = PreprocessSpec(compute="float64")
    assert legacy.canonical_json() == PRE_ISSUE_11_DEFAULT_JSON
    old = PreprocessSpec.from_dict(json.loads(PRE_ISSUE_11_DEFAULT_JSON))
    assert old == legacy and old.compute == "float64" and keys.spec_digest(old) == keys.spec_digest(legacy)
    assert old.canonical_json() == PRE_ISSUE_11_DEFAULT_JSON
    assert keys.object_key("0" * 64, old, keys.label_key(None)) != keys.object_key("0" * 64, PreprocessSpec(),
                                                                                  keys.label_key(None))
    # Settings a person writes (a config file, a recipe, flags) that do not name it take the default.
    assert PreprocessSpec.from_settings(json.loads(PRE_ISSUE_11_DEFAULT_JSON)) == PreprocessSpec()
    assert load_config(None, {}).spec.compute == "float32-fft"
    tcp = PreprocessSpec(montage="tcp", mains_notch=False)
    assert json.loads(tcp.canonical_json())["montage"] == "tcp" and '"mains_notch":false' in tcp.canonical_json()
    assert PreprocessSpec.from_dict(json.loads(tcp.canonical_json())) == tcp


def test_the_notch_follows_the_declared_power_line() -> None:
    spec = PreprocessSpec(notch_hz=(60.0, 120.0))
    assert spec.for_recording(None) is spec and spec.for_recording(60.0) is spec  # TUSZ trees, TUH conversions
    assert spec.for_recording(50.0).notch_hz == (50.0, 100.0)  # Siena, SeizeIT
    assert keys.signal_key("0" * 64, spec.for_recording(50.0)) != keys.signal_key("0" * 64, spec)
    fixed = dataclasses.replace(spec, mains_notch=False)
    assert fixed.for_recording(50.0) is fixed
    assert PreprocessSpec(notch_hz=()).for_recording(50.0).notch_hz == ()
