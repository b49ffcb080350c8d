"""Tests for eegcache.sources.annotations: real TUSZ formats, every error case, and fuzzing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eegcache.pipeline.labels import merge_events
from eegcache.sources import annotations as ann
from eegcache.sources.annotations import (
    ANNOTATION_SUFFIXES,
    Annotation,
    AnnotationError,
    find_annotation,
    parse_annotation,
)

NAME = "aaaaaaac_s001_t000"
HEADER = "channel,start_time,stop_time,label,confidence"


def csv_text(rows: list[str], duration: str = "829.00", bname: str = NAME) -> str:
    """A file laid out exactly like TUSZ v2.0.x (comment block, header, rows)."""
    lines = [
        "# version = csv_v1.0.0",
        f"# bname = {bname}",
        f"# duration = {duration} secs",
        "# montage_file = $NEDC_NFC/lib/nedc_eas_default_montage.txt",
        "#",
        HEADER,
        *rows,
    ]
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, suffix: str, text: str | bytes, name: str = NAME) -> Path:
    path = tmp_path / f"{name}{suffix}"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- valid files ------------------------------------------------------------------------------


def test_csv_bi_with_seizures(tmp_path: Path) -> None:
    path = write(
        tmp_path, ".csv_bi", csv_text(["TERM,1.0000,7.0000,seiz,1.0000", "TERM,21.1212,37.0000,seiz,1.0000"])
    )
    a = parse_annotation(path)
    assert a == Annotation(path=path, format="csv_bi", duration_s=829.0, events=((1.0, 7.0), (21.1212, 37.0)))


def test_csv_bi_without_duration_line_parses_with_a_warning(tmp_path: Path) -> None:
    """Regression (issue 13): a .csv_bi without its '# duration' line failed the recording; the EDF's length is
    used instead (ingest never needed the annotation's duration) and the file says so in ``warnings``."""
    path = write(tmp_path, ".csv_bi", f"{HEADER}\nTERM,1.0,2.0,seiz,1.0\n")
    a = parse_annotation(path)
    assert a.duration_s is None and a.events == ((1.0, 2.0),)
    assert len(a.warnings) == 1 and "no '# duration" in a.warnings[0] and "from the EDF" in a.warnings[0]
    assert parse_annotation(write(tmp_path, ".csv_bi", csv_text(GOOD))).warnings == ()


@pytest.mark.parametrize("suffix", [".csv_bi", ".csv"])
def test_extra_and_reordered_named_columns_parse_by_name(tmp_path: Path, suffix: str) -> None:
    """Regression (issue 13): an extra named column failed the recording; columns are found by header name."""
    extra = csv_text(["TERM,1.0,7.0,seiz,1.0,reviewed", "TERM,8.0,9.0,bckg,1.0,"]).replace(HEADER, HEADER + ",note")
    assert parse_annotation(write(tmp_path, suffix, extra)).events == ((1.0, 7.0),)
    reordered = "# duration = 30.00 secs\nlabel,stop_time,start_time,channel\nseiz,7.0,1.0,TERM\nbckg,9.0,8.0,TERM\n"
    a = parse_annotation(write(tmp_path, suffix, reordered))
    assert a.events == ((1.0, 7.0),) and a.duration_s == 30.0


def test_ingest_takes_an_annotation_without_duration_and_with_an_extra_column(tree, tmp_path: Path) -> None:
    """The whole path, as a user runs it (a real ``eegcache ingest`` process): both recordings are ingested with
    the labels of their rows."""
    from edf_factory import Rec, query, run_cli

    a = Rec("train", "aaaaaaaa", 1, 2003, "01_tcp_ar", 0, duration_s=120, events=((10.0, 70.0),))
    b = Rec("train", "aaaaaaaa", 1, 2003, "01_tcp_ar", 1, duration_s=120, events=((10.0, 70.0),))
    root, edfs = tree(a, b)
    edfs[a].with_suffix(".csv_bi").write_text(f"{HEADER}\nTERM,10.0000,70.0000,seiz,1.0000\n")
    edfs[b].with_suffix(".csv_bi").write_text(csv_text(["TERM,10.0000,70.0000,seiz,1.0000,ok"], duration="120.00")
                                              .replace(HEADER, HEADER + ",reviewer_note"))
    cache = tmp_path / "cache"
    done = run_cli("ingest", root, "--cache", cache, "--quiet", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = query(cache, "SELECT recording, status, n_windows FROM recording_status ORDER BY recording")
    assert [r[1] for r in rows] == ["ingested", "ingested"] and all(r[2] == 2 for r in rows)
    assert query(cache, "SELECT count(*) FROM events") == [(2,)]
    labels = query(cache, "SELECT recording, label FROM window_labels ORDER BY recording, start_s")
    assert [lab for _, lab in labels] == ["partial_seizure", "partial_seizure"] * 2
    warnings = dict(query(cache, "SELECT name, warnings FROM recordings"))
    assert "no '# duration" in (warnings[edfs[a].stem] or "") and warnings[edfs[b].stem] is None


def test_csv_bi_stub_background_row_has_no_events(tmp_path: Path) -> None:
    path = write(tmp_path, ".csv_bi", csv_text(["TERM,0.0119,1.0492,bckg,1.0000"], duration="300.00"))
    a = parse_annotation(path)
    assert a.events == ()
    assert a.duration_s == 300.0


def test_csv_bi_header_only_has_no_events(tmp_path: Path) -> None:
    assert parse_annotation(write(tmp_path, ".csv_bi", csv_text([]))).events == ()


@pytest.mark.parametrize("duration, expected", [("829.00", 829.0), ("829.0000", 829.0), ("300.5", 300.5)])
def test_duration_decimals(tmp_path: Path, duration: str, expected: float) -> None:
    path = write(tmp_path, ".csv_bi", csv_text(["TERM,1.0000,7.0000,seiz,1.0000"], duration=duration))
    assert parse_annotation(path).duration_s == expected


def test_csv_per_channel_union(tmp_path: Path) -> None:
    rows = [
        "FP1-F7,0.0000,10.0000,bckg,1.0000",
        "FP1-F7,10.0000,20.0000,fnsz,1.0000",
        "FP1-F7,20.0000,300.0000,bckg,1.0000",
        "F7-T3,0.0000,15.0000,bckg,1.0000",
        "F7-T3,15.0000,25.0000,fnsz,1.0000",
        "F7-T3,25.0000,300.0000,bckg,1.0000",
        "T3-T5,0.0000,25.0000,bckg,1.0000",
        "T3-T5,25.0000,30.0000,CPSZ,1.0000",  # touches F7-T3's event: merged; label case-insensitive
        "T3-T5,30.0000,100.0000,bckg,1.0000",
        "T3-T5,100.0000,120.5000,gnsz,1.0000",
        "T3-T5,120.5000,300.0000,bckg,1.0000",
    ]
    a = parse_annotation(write(tmp_path, ".csv", csv_text(rows, duration="300.0000")))
    assert a.format == "csv"
    assert a.events == ((10.0, 30.0), (100.0, 120.5))


def test_tolerant_header_and_crlf(tmp_path: Path) -> None:
    text = (
        "# duration = 60.00 secs\r\n Channel , START_TIME,stop_time ,Label,confidence \r\nTERM,1,2,SEIZ,1\r\n"
    )
    assert parse_annotation(write(tmp_path, ".csv_bi", text)).events == ((1.0, 2.0),)


def test_unsorted_overlapping_rows_are_merged(tmp_path: Path) -> None:
    rows = ["TERM,50.0,60.0,seiz,1", "TERM,1.0,5.0,seiz,1", "TERM,4.0,8.0,seiz,1", "TERM,8.0,9.0,seiz,1"]
    assert parse_annotation(write(tmp_path, ".csv_bi", csv_text(rows))).events == ((1.0, 9.0), (50.0, 60.0))


def test_zero_length_event_dropped(tmp_path: Path) -> None:
    rows = ["TERM,5.0000,5.0000,seiz,1.0000", "TERM,7.0000,8.0000,seiz,1.0000"]
    assert parse_annotation(write(tmp_path, ".csv_bi", csv_text(rows))).events == ((7.0, 8.0),)


def test_times_beyond_duration_not_clipped(tmp_path: Path) -> None:
    path = write(tmp_path, ".csv_bi", csv_text(["TERM,590.0000,640.0000,seiz,1.0000"], duration="601.00"))
    assert parse_annotation(path).events == ((590.0, 640.0),)


def test_tse_bi_legacy(tmp_path: Path) -> None:
    text = (
        "version = tse_v1.0.0\n\n"
        "0.0000 36.8868 bckg 1.0000\n36.8868 183.3055 seiz 1.0000\n183.3055 301.0000 bckg 1.0000\n"
    )
    a = parse_annotation(write(tmp_path, ".tse_bi", text))
    assert a == Annotation(path=a.path, format="tse_bi", duration_s=None, events=((36.8868, 183.3055),))


def test_tse_legacy_types(tmp_path: Path) -> None:
    text = (
        "\nversion = tse_v1.0.0\n"
        "0.0 10.0 bckg 1.0\n10.0 20.0 fnsz 1.0\n20.0\t30.0\tgnsz\t1.0\n30.0 40.0 bckg 1.0\n"
    )
    a = parse_annotation(write(tmp_path, ".tse", text))
    assert (a.format, a.duration_s, a.events) == ("tse", None, ((10.0, 30.0),))


def test_text_argument_skips_reading(tmp_path: Path) -> None:
    path = tmp_path / f"{NAME}.csv_bi"  # never written
    a = parse_annotation(path, text=csv_text(["TERM,1.0,2.0,seiz,1.0"]))
    assert a.events == ((1.0, 2.0),)


def test_bom_is_tolerated(tmp_path: Path) -> None:
    path = write(tmp_path, ".csv_bi", b"\xef\xbb\xbf" + csv_text(["TERM,1.0,2.0,seiz,1.0"]).encode())
    assert parse_annotation(path).events == ((1.0, 2.0),)


# --- find_annotation --------------------------------------------------------------------------


def test_find_annotation_preference(tmp_path: Path) -> None:
    edf = tmp_path / f"{NAME}.edf"
    edf.write_bytes(b"")
    assert find_annotation(edf) is None
    for suffix in reversed(ANNOTATION_SUFFIXES):
        (tmp_path / f"{NAME}{suffix}").write_text("x")
        assert find_annotation(edf) == tmp_path / f"{NAME}{suffix}"
    (tmp_path / f"{NAME}.csv_bi").unlink()
    assert find_annotation(edf) == tmp_path / f"{NAME}.csv"


def test_find_annotation_ignores_directories(tmp_path: Path) -> None:
    (tmp_path / f"{NAME}.csv_bi").mkdir()
    (tmp_path / f"{NAME}.tse_bi").write_text("x")
    assert find_annotation(tmp_path / f"{NAME}.edf") == tmp_path / f"{NAME}.tse_bi"


# --- errors -----------------------------------------------------------------------------------

GOOD = ["TERM,1.0000,7.0000,seiz,1.0000"]
ERROR_CASES = [
    # (suffix, text, expected substrings)
    (".csv_bi", "", ["file is empty"]),
    (".csv_bi", "\n  \n\n", ["file is empty"]),
    (".tse_bi", "", ["file is empty"]),
    (
        ".csv_bi",
        "# duration = 10.00 secs\nchan,start,stop,label,conf\n",
        ["line 2", "expected header", "chan,start"],
    ),
    (".csv_bi", "# duration = 10.00 secs\nTERM,1,2,seiz,1\n", ["line 2", "expected header"]),
    (".csv_bi", "# duration = 10.00 secs\n# only comments\n", ["no header line"]),
    (".csv_bi", "# duration = 10.00 secs\nchannel,start_time,label,confidence\n", ["line 2", "expected header"]),
    (".csv_bi", "# duration = 10.00 secs\nchannel,start_time,stop_time,label,,x\n", ["line 2", "unnamed column"]),
    (".csv_bi", "# duration = 10.00 secs\nchannel,start_time,stop_time,label,label\n", ["line 2", "'label' twice"]),
    (".csv_bi", "# duration = 10.00 secs\nchannel,start_time,stop_time,label,confidence,note\nTERM,1,2,seiz,1\n",
     ["line 3", "expected 6", "got 5"]),
    (".csv_bi", csv_text(["TERM,1.0,2.0,seiz"]), ["line 7", "expected 5", "got 4"]),
    (".csv_bi", csv_text(["TERM,1.0,2.0,seiz,1.0,extra"]), ["line 7", "expected 5", "more than 5"]),
    (".csv_bi", csv_text(["TERM,abc,2.0,seiz,1.0"]), ["line 7", "start_time 'abc' is not a number"]),
    (".csv_bi", csv_text(["TERM,1.0,,seiz,1.0"]), ["line 7", "stop_time '' is not a number"]),
    (".csv_bi", csv_text(["TERM,1_0,20,seiz,1.0"]), ["line 7", "start_time '1_0' is not a number"]),
    (".csv_bi", csv_text(["TERM,nan,2.0,seiz,1.0"]), ["line 7", "start_time 'nan' is not a finite number"]),
    (".csv_bi", csv_text(["TERM,1.0,inf,seiz,1.0"]), ["line 7", "stop_time 'inf' is not a finite number"]),
    (".csv_bi", csv_text(["TERM,-1.0,2.0,seiz,1.0"]), ["line 7", "start_time -1.0 is negative"]),
    (
        ".csv_bi",
        csv_text([*GOOD, "TERM,7.0,3.0,seiz,1.0"]),
        ["line 8: stop_time 3.0 is before start_time 7.0"],
    ),
    (".csv_bi", csv_text(["FP1-F7,1.0,2.0,seiz,1.0"]), ["line 7", "channel 'FP1-F7'", "TERM"]),
    (".csv_bi", csv_text(["TERM,1.0,2.0,,1.0"]), ["line 7", "empty label"]),
    (".csv", csv_text([",1.0,2.0,fnsz,1.0"]), ["line 7", "empty channel"]),
    (".csv_bi", csv_text(GOOD, duration="abc"), ["line 3", "duration 'abc' is not a number"]),
    (".csv_bi", csv_text(GOOD, duration="nan"), ["line 3", "duration 'nan' is not a finite number"]),
    (".csv_bi", csv_text(GOOD, duration="-5.00"), ["line 3", "duration -5.0 is negative"]),
    (
        ".csv_bi",
        "# duration = 1.00 secs\n# duration = 2.00 secs\n" + HEADER + "\n",
        ["line 2", "contradicts"],
    ),
    (".tse_bi", "0.0 1.0 seiz 1.0\n", ["line 1", "expected 'version = tse_v1.0.0'"]),
    (".tse_bi", "version = tse_v1.0.0\n0.0 1.0 seiz\n", ["line 2", "expected 4", "got 3"]),
    (".tse_bi", "version = tse_v1.0.0\n0.0 1.0 seiz 1.0 x\n", ["line 2", "more than 4"]),
    (".tse_bi", "version = tse_v1.0.0\n0.0 x seiz 1.0\n", ["line 2", "stop 'x' is not a number"]),
    (".tse", "version = tse_v1.0.0\n5.0 4.0 fnsz 1.0\n", ["line 2", "stop 4.0 is before start 5.0"]),
    (".tse", "version = tse_v1.0.0\n-inf 4.0 fnsz 1.0\n", ["line 2", "not a finite number"]),
    (".edf", "whatever", ["unknown annotation suffix '.edf'"]),
]


@pytest.mark.parametrize("suffix, text, expected", ERROR_CASES)
def test_errors_name_file_and_problem(tmp_path: Path, suffix: str, text: str, expected: list[str]) -> None:
    path = write(tmp_path, suffix, text)
    with pytest.raises(AnnotationError) as info:
        parse_annotation(path)
    message = str(info.value)
    assert message.startswith(f"{NAME}{suffix}: "), message
    for part in expected:
        assert part in message, (part, message)


def test_error_is_a_value_error() -> None:
    assert issubclass(AnnotationError, ValueError)


def test_undecodable_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, ".csv_bi", csv_text(GOOD).encode() + b"TERM,1.0,2.0,s\xff\xfeiz,1.0\n")
    with pytest.raises(AnnotationError, match=rf"^{NAME}\.csv_bi: not valid UTF-8"):
        parse_annotation(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match=rf"^{NAME}\.csv_bi: cannot read file"):
        parse_annotation(tmp_path / f"{NAME}.csv_bi")


def test_oversized_file_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / f"{NAME}.csv_bi"
    with path.open("wb") as fh:  # sparse: 64 MiB + 1 without writing it
        fh.truncate(ann.MAX_FILE_BYTES + 1)

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was opened")

    monkeypatch.setattr(Path, "open", no_open)
    with pytest.raises(AnnotationError, match=rf"^{NAME}\.csv_bi: file is \d+ bytes, larger than"):
        parse_annotation(path)


def test_oversized_text_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ann, "MAX_FILE_BYTES", 100)
    with pytest.raises(AnnotationError, match="larger than"):
        parse_annotation(Path(f"{NAME}.csv_bi"), text=csv_text(GOOD * 10))


def test_hostile_long_lines_give_short_messages(tmp_path: Path) -> None:
    text = csv_text(["TERM," + "," * 1_000_000 + "x"])
    with pytest.raises(AnnotationError) as info:
        parse_annotation(write(tmp_path, ".csv_bi", text))
    assert "more than 5" in str(info.value) and len(str(info.value)) < 300


# --- scale ------------------------------------------------------------------------------------


def _big_file(tmp_path: Path, n_rows: int) -> Path:
    rows = "".join(f"TERM,{2 * i}.0000,{2 * i + 1}.5000,seiz,1.0000\n" for i in range(n_rows))
    return write(tmp_path, ".csv_bi", csv_text([]) + rows)


def _check_big(tmp_path: Path, n_rows: int) -> None:
    """Every row of a large annotation is parsed, in order, to the exact times (speed is the bench's business)."""
    a = parse_annotation(_big_file(tmp_path, n_rows))
    assert len(a.events) == n_rows
    assert a.events[0] == (0.0, 1.5) and a.events[-1] == (2.0 * (n_rows - 1), 2.0 * n_rows - 0.5)
    assert a.events[n_rows // 2] == (2.0 * (n_rows // 2), 2.0 * (n_rows // 2) + 1.5)


def test_parse_1e5_rows(tmp_path: Path) -> None:
    _check_big(tmp_path, 100_000)


@pytest.mark.stress
def test_parse_1e6_rows(tmp_path: Path) -> None:
    _check_big(tmp_path, 1_000_000)


# --- properties -------------------------------------------------------------------------------

times = st.integers(min_value=0, max_value=2_000_000).map(lambda k: k / 10_000)  # 4-decimal seconds
labels = st.sampled_from(["seiz", "SEIZ", "bckg", "fnsz", "gnsz", "Bckg"])
rows_strategy = st.lists(st.tuples(times, times, labels), max_size=40).map(
    lambda rows: [(min(a, b), max(a, b), lab) for a, b, lab in rows]
)


@settings(max_examples=150, deadline=None)
@given(rows=rows_strategy, decimals=st.sampled_from([2, 4]))
def test_random_csv_bi_round_trip(
    tmp_path_factory: pytest.TempPathFactory, rows: list, decimals: int
) -> None:
    lines = [f"TERM,{a:.4f},{b:.4f},{lab},1.0000" for a, b, lab in rows]
    path = write(tmp_path_factory.mktemp("rt"), ".csv_bi", csv_text(lines, duration=f"{1234.5:.{decimals}f}"))
    a = parse_annotation(path)
    expected = merge_events(
        (float(f"{s:.4f}"), float(f"{e:.4f}")) for s, e, lab in rows if lab.lower() != "bckg"
    )
    assert a.events == expected
    assert a.duration_s == 1234.5


VALID_SAMPLES = {
    ".csv_bi": csv_text(["TERM,1.0000,7.0000,seiz,1.0000", "TERM,21.1212,37.0000,seiz,1.0000"]).encode(),
    ".csv": csv_text(["FP1-F7,0.0000,10.0000,bckg,1.0000", "FP1-F7,10.0000,20.0000,fnsz,1.0000"]).encode(),
    ".tse_bi": b"version = tse_v1.0.0\n0.0000 36.8868 bckg 1.0000\n36.8868 183.3055 seiz 1.0000\n",
    ".tse": b"version = tse_v1.0.0\n0.0 10.0 fnsz 1.0\n",
}


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from(sorted(VALID_SAMPLES)))
    data = bytearray(VALID_SAMPLES[suffix])
    pieces = st.sampled_from(
        [b",", b"\n", b"#", b" ", b"nan", b"-", b"\xff", b"\r", b"e9", b"=", b"bckg", b"\x00"]
    )
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = draw(st.one_of(pieces, st.binary(min_size=1, max_size=4)))
        if op == "insert":
            data[pos:pos] = chunk
        elif op == "delete":
            del data[pos : pos + len(chunk)]
        else:
            data[pos : pos + len(chunk)] = chunk
    return suffix, bytes(data)


def _parse_or_annotation_error(path: Path) -> None:
    try:
        result = parse_annotation(path)
    except AnnotationError as exc:
        assert str(exc).startswith(path.name + ": ")
    else:
        assert isinstance(result, Annotation)
        assert list(result.events) == sorted(result.events)
        assert all(0 <= s < e for s, e in result.events)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated())
def test_fuzz_mutated_valid_files(tmp_path_factory: pytest.TempPathFactory, case: tuple[str, bytes]) -> None:
    suffix, data = case
    _parse_or_annotation_error(write(tmp_path_factory.mktemp("fz"), suffix, data))


@settings(max_examples=200, deadline=None)
@given(suffix=st.sampled_from(ANNOTATION_SUFFIXES), data=st.binary(max_size=200))
def test_fuzz_random_bytes(tmp_path_factory: pytest.TempPathFactory, suffix: str, data: bytes) -> None:
    _parse_or_annotation_error(write(tmp_path_factory.mktemp("fz"), suffix, data))


@settings(max_examples=200, deadline=None)
@given(suffix=st.sampled_from(ANNOTATION_SUFFIXES), text=st.text(max_size=200))
def test_fuzz_random_text(suffix: str, text: str) -> None:
    path = Path(f"{NAME}{suffix}")
    try:
        result = parse_annotation(path, text=text)
    except AnnotationError as exc:
        assert str(exc).startswith(path.name + ": ")
    else:
        assert isinstance(result, Annotation)
