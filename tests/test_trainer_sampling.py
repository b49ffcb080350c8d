"""The epoch draw: exact ratios and caps, determinism, rank shards, --where safety and every refusal, on real
SQLite indexes created by the migrations."""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from fractions import Fraction

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trainer_fixtures import add_object, add_recording, add_window_set, copy_index, hand_index, migrated_index

from trainer.cli import main
from trainer.sampling import CODES, EpochSampler, Ratios, SamplingError, Selection, shard, target_counts

HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return migrated_index(tmp_path_factory.mktemp("template"))


_counter = itertools.count()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, template):
    """A function that makes a new hand-made index per call (hypothesis examples share one test invocation)."""
    base = tmp_path_factory.mktemp("hand")

    def make(counts, **kwargs):
        return hand_index(template, base / f"i{next(_counter)}", counts, **kwargs)

    return make


ratio_values = st.sampled_from([0.0, 0.1, 0.3, 0.5, 1.0, 1.5, 2.5, 4.0])


@HYP
@given(p=st.integers(1, 40), f=st.integers(0, 40), b=st.integers(0, 120),
       ratios=st.builds(Ratios, partial=ratio_values, full=ratio_values, background=ratio_values),
       seed=st.integers(0, 2**32 - 1), epoch=st.integers(0, 1000))
def test_draw_has_exact_ratios_capped_by_what_exists(fresh, p, f, b, ratios, seed, epoch):
    idx = fresh({1: p, 2: f, 0: b}, dev_counts={1: 3, 2: 1, 0: 5})
    sampler = EpochSampler(idx.folder, Selection(split="train"), ratios, seed)
    assert sampler.available == {"partial": p, "full": f, "background": b}  # dev windows are not selected
    draw = sampler.draw(epoch)
    for name in ("partial", "full", "background"):
        exact = Fraction(str(getattr(ratios, name))) * p  # independent of the float arithmetic in the sampler
        want = min(sampler.available[name], math.floor(exact + Fraction(1, 2)))
        assert draw.drawn[name] == want
        chosen = draw.ids[draw.codes == CODES[name]]
        assert set(chosen.tolist()) <= set(idx.ids[CODES[name]])  # each id really has its class
    assert len(set(draw.ids.tolist())) == draw.ids.size  # without replacement
    assert draw.ids.size == sampler.epoch_size() == sum(draw.drawn.values())


@HYP
@given(counts=st.tuples(st.integers(1, 30), st.integers(0, 30), st.integers(0, 60)), seed=st.integers(0, 2**31),
       epoch=st.integers(0, 50))
def test_draw_is_a_function_of_seed_and_epoch(fresh, counts, seed, epoch):
    idx = fresh({1: counts[0], 2: counts[1], 0: counts[2]})
    first = EpochSampler(idx.folder, seed=seed).draw(epoch)
    second = EpochSampler(idx.folder, seed=seed)  # a new process after --resume builds a new sampler
    second.draw(epoch + 1)  # drawing other epochs first changes nothing
    again = second.draw(epoch)
    assert np.array_equal(first.ids, again.ids) and np.array_equal(first.codes, again.codes)


def test_epochs_and_seeds_differ(fresh):
    idx = fresh({1: 20, 2: 10, 0: 100})
    sampler = EpochSampler(idx.folder, seed=3)
    draws = [sampler.draw(e).ids for e in range(5)]
    assert all(not np.array_equal(a, b) for a, b in itertools.combinations(draws, 2))
    # background is a subsample, so the set of windows changes too, not only the order
    assert len({frozenset(d.tolist()) for d in draws}) == 5
    assert not np.array_equal(EpochSampler(idx.folder, seed=4).draw(0).ids, draws[0])


@given(n=st.integers(0, 200), world=st.integers(1, 9), data=st.data())
def test_shards_are_disjoint_equal_and_cover_the_epoch(n, world, data):
    ids = np.random.default_rng(n).permutation(10_000)[:n]
    padded = [shard(ids, r, world) for r in range(world)]
    trimmed = [shard(ids, r, world, pad=False) for r in range(world)]
    assert len({s.size for s in padded}) == 1 and len({s.size for s in trimmed}) == 1  # same step count per rank
    union = np.concatenate(padded)
    assert set(union.tolist()) == set(ids.tolist())  # padding: every window is seen
    assert union.size - n == (-n) % world if n else union.size == 0  # ...and only the pad is repeated
    flat = np.concatenate(trimmed)
    assert len(set(flat.tolist())) == flat.size  # trimming: strictly disjoint
    assert n - flat.size < world
    rank = data.draw(st.integers(0, world - 1))
    assert np.array_equal(padded[rank][: n // world], ids[rank::world][: n // world])


@HYP
@given(world=st.integers(1, 6), seed=st.integers(0, 1000), epoch=st.integers(0, 20))
def test_sampler_ranks_share_one_epoch(fresh, world, seed, epoch):
    idx = fresh({1: 11, 2: 3, 0: 30})
    sampler = EpochSampler(idx.folder, seed=seed)
    whole = sampler.draw(epoch)
    parts = [sampler.draw(epoch, rank, world) for rank in range(world)]
    assert len({p.ids.size for p in parts}) == 1
    seen = np.concatenate([p.ids for p in parts])
    assert set(seen.tolist()) == set(whole.ids.tolist())
    assert seen.size - whole.ids.size == (-whole.ids.size) % world
    assert all(p.epoch_size == whole.ids.size for p in parts)


def test_max_windows_caps_the_epoch(fresh):
    idx = fresh({1: 10, 2: 5, 0: 40})
    sampler = EpochSampler(idx.folder, seed=1, max_windows=7)
    draw = sampler.draw(0)
    assert draw.ids.size == 7 == sampler.epoch_size()
    assert sum(draw.drawn.values()) == 7


def test_where_filters_with_bound_parameters(fresh):
    idx = fresh({1: 14, 2: 7, 0: 35})
    sel = Selection(split="train", where="subject = :who AND montage LIKE '01%'", params=(("who", "bbbbbbbb"),))
    sampler = EpochSampler(idx.folder, sel, seed=0)
    for name, code in CODES.items():
        want = sorted(i for i in idx.ids[code] if idx.subject_of[i] == "bbbbbbbb")
        assert sampler.ids(name).tolist() == want
    assert sampler.available["partial"] < 14


INJECTIONS = [
    "1=1; DROP TABLE windows",
    "1=1); DELETE FROM windows; --",
    "label='x' OR 1=1) UNION SELECT id FROM windows --",
    "1=1) UNION SELECT 1; UPDATE windows SET label = 2; --",
    "window_id IN (SELECT id FROM windows) AND load_extension('x') IS NULL",
    "1=1 AND (SELECT count(*) FROM pragma_writable_schema) >= 0",
]


@pytest.mark.parametrize("where", INJECTIONS)
def test_where_cannot_write(fresh, where):
    idx = fresh({1: 5, 2: 2, 0: 10})
    index = idx.folder / "index.sqlite"

    def snapshot():
        conn = sqlite3.connect(index)
        try:
            return (conn.execute("SELECT count(*), sum(label) FROM windows").fetchone(),
                    sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master")))
        finally:
            conn.close()

    before = snapshot()
    try:
        EpochSampler(idx.folder, Selection(where=where))
    except SamplingError as exc:
        assert "--where" in str(exc)
    assert snapshot() == before


def test_refuses_selection_without_seizure_windows(fresh):
    idx = fresh({1: 3, 0: 12}, dev_counts={0: 9})
    with pytest.raises(SamplingError, match=r"no seizure windows.*partial_seizure 0, full_seizure 0, no_seizure 9"):
        EpochSampler(idx.folder, Selection(split="dev"))
    with pytest.raises(SamplingError, match=r"no seizure windows.*no_seizure 0"):
        EpochSampler(idx.folder, Selection(where="subject = 'nobody'"))


def test_refuses_full_only_selection_because_ratios_are_relative_to_partial(fresh):
    idx = fresh({2: 4, 0: 12})
    with pytest.raises(SamplingError, match=r"no partial_seizure windows.*full_seizure 4"):
        EpochSampler(idx.folder)


def test_refuses_missing_window_set_and_lists_existing(fresh):
    idx = fresh({1: 3, 0: 5})
    with pytest.raises(SamplingError, match=r"no window set of 30 s windows at 10 s stride.*"
                                            r"60 s windows at 60 s stride, 256 Hz \(8 windows\)"):
        EpochSampler(idx.folder, Selection(window_s=30, stride_s=10))


def test_refuses_unknown_split(fresh):
    idx = fresh({1: 3, 0: 5})
    with pytest.raises(SamplingError, match=r"split 'trian' has no recordings.*splits present: train"):
        EpochSampler(idx.folder, Selection(split="trian"))


def test_refuses_failed_and_unwindowed_recordings_unless_allowed(fresh):
    idx = fresh({1: 4, 2: 1, 0: 10})
    conn = sqlite3.connect(idx.folder / "index.sqlite")
    add_recording(conn, "broken", status="failed", reason="broken.edf: missing required electrode(s) Fz, Pz")
    add_object(conn, "u" * 64, 4 * 15360)
    add_recording(conn, "unwindowed", object_key="u" * 64)
    add_object(conn, "s" * 64, 100)  # shorter than a window: having no window is correct, not a problem
    add_recording(conn, "short", object_key="s" * 64)
    conn.commit()
    conn.close()
    with pytest.raises(SamplingError) as info:
        EpochSampler(idx.folder)
    message = str(info.value)
    assert "1 of 6 recordings in split 'train' are not ingested: 1 failed" in message
    assert "broken: broken.edf: missing required electrode(s) Fz, Pz" in message
    assert "1 ingested recordings in split 'train' have no 60 s / 60 s windows" in message
    assert "--allow-incomplete" in message
    sampler = EpochSampler(idx.folder, Selection(allow_incomplete=True))
    assert sampler.available == {"partial": 4, "full": 1, "background": 10}
    assert any("warning" in line for line in sampler.describe())


def test_draw_at_a_million_windows(tmp_path, template):
    """One query per class at construction; then pure numpy per epoch (10 M windows: about 0.1-0.4 s per draw)."""
    conn = copy_index(template, tmp_path)
    ws = add_window_set(conn)
    add_object(conn, "o" * 64, 10**9)
    rec = add_recording(conn, "big", object_key="o" * 64)
    conn.execute("""WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 999999)
                    INSERT INTO windows(recording_id, window_set_id, start_sample, seizure_samples, label)
                    SELECT ?, ?, i * 15360, 0, CASE WHEN i % 50 = 0 THEN 1 WHEN i % 50 = 1 THEN 2 ELSE 0 END FROM n""",
                 (rec, ws))
    conn.commit()
    conn.close()
    sampler = EpochSampler(tmp_path, seed=0)
    assert sampler.available == {"partial": 20000, "full": 20000, "background": 960000}
    draw = sampler.draw(7)
    assert draw.drawn == {"partial": 20000, "full": 6000, "background": 50000}  # its time: bench "epoch draw"


def test_target_counts_round_half_up():
    assert target_counts({"partial": 5, "full": 100, "background": 100}, Ratios(1, 0.3, 2.5)) == {
        "partial": 5, "full": 2, "background": 13}
    assert target_counts({"partial": 5, "full": 1, "background": 3}, Ratios()) == {
        "partial": 5, "full": 1, "background": 3}


def test_ratios_parse():
    assert Ratios.parse("partial=1,full=0.3,background=2.5") == Ratios()
    assert Ratios.parse("background=4") == Ratios(background=4)
    with pytest.raises(ValueError, match="name=value"):
        Ratios.parse("seizure=1")
    with pytest.raises(ValueError, match=">= 0"):
        Ratios.parse("full=-1")


# ----------------------------------------------------------------------------------------------------------------
# trainer sample


def test_cli_sample_json(fresh):
    idx = fresh({1: 6, 2: 2, 0: 20})
    result = CliRunner().invoke(main, ["sample", "--cache", str(idx.folder), "--epoch", "3", "--seed", "5", "--json",
                                       "--ids", "--rank", "1", "--world-size", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) >= {"selection", "ratios", "seed", "window_set", "available", "per_epoch", "epoch_windows", "draw"}
    assert data["available"] == {"partial_seizure": 6, "full_seizure": 2, "no_seizure": 20}
    assert data["per_epoch"] == {"partial_seizure": 6, "full_seizure": 2, "no_seizure": 15}
    draw = data["draw"]
    assert draw["epoch"] == 3 and draw["rank"] == 1 and draw["world_size"] == 2
    assert draw["epoch_windows"] == 23 and draw["windows"] == 12 == len(draw["ids"])
    expected = EpochSampler(idx.folder, seed=5).draw(3, 1, 2)
    assert draw["ids"] == expected.ids.tolist()


def test_cli_sample_text_and_refusal(fresh):
    idx = fresh({1: 2, 0: 4})
    ok = CliRunner().invoke(main, ["sample", "--cache", str(idx.folder)])
    assert ok.exit_code == 0 and "available: partial_seizure 2, full_seizure 0, no_seizure 4" in ok.output
    bad = CliRunner().invoke(main, ["sample", "--cache", str(idx.folder), "--window", "10"])
    assert bad.exit_code == 1
    assert "no window set of 10 s windows" in bad.output
    bad = CliRunner().invoke(main, ["sample", "--cache", str(idx.folder), "--where", "nosuchcolumn = 1"])
    assert bad.exit_code == 1 and "no such column: nosuchcolumn" in bad.output
