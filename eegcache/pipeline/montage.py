"""Montages: which channels a stored signal holds, and how they are made from an EDF's channels.

Pure functions over channel labels, so that every rule can be tested without a file:

- ``referential`` (the default): the spec's electrodes (19, SzCORE order) as stored, matched by the parsed token of
  the label whatever the reference suffix (``EEG C3-REF``, ``C3-LE``, ``C3-Avg``, ``C3``; any case). Never by
  substring: ``EEG C3P-REF`` is not C3. Synonyms T7=T3, T8=T4, P7=T5, P8=T6.
- ``average``: the same electrodes minus their common average (over the electrodes present).
- ``double-banana``: SzCORE's 18 bipolar pairs. A pair the file stores as a bipolar channel (CHB-MIT: ``FP1-F7``)
  is taken as stored; otherwise it is derived by subtraction from referential electrodes.
- ``tcp``: TUSZ's 22-channel TCP montage, made the same way; a file without A1 and A2 (``03_tcp_ar_a``,
  ``04_tcp_le_a``) gives the 20 pairs that do not use them.

A file that cannot supply a montage fails with a reason that names what is missing (a CHB-MIT file, bipolar only,
under ``referential``: "it holds bipolar channels only").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# numpy (~0.1 s to import) is imported by the functions that use it: `eegcache ingest` of an unchanged tree needs none.

ELECTRODE_SYNONYMS = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}
REFERENCE_SUFFIXES = ("REF", "LE", "AVG", "AR")
# A referential label: optional "EEG ", an electrode token, an optional reference suffix.
_REFERENTIAL = re.compile(r"^(?:EEG\s+)?([A-Z0-9]+)(?:-(?:REF|LE|AVG|AR))?$")
# A bipolar label: two electrode tokens (CHB-MIT repeats a pair as "T8-P8-0", "T8-P8-1": the first is used).
_BIPOLAR = re.compile(r"^(?:EEG\s+)?([A-Z0-9]+)-([A-Z0-9]+)(?:-\d+)?$")

DOUBLE_BANANA = (
    ("Fp1", "F7"), ("F7", "T3"), ("T3", "T5"), ("T5", "O1"),
    ("Fp1", "F3"), ("F3", "C3"), ("C3", "P3"), ("P3", "O1"),
    ("Fp2", "F4"), ("F4", "C4"), ("C4", "P4"), ("P4", "O2"),
    ("Fp2", "F8"), ("F8", "T4"), ("T4", "T6"), ("T6", "O2"),
    ("Fz", "Cz"), ("Cz", "Pz"),
)  # fmt: skip
TCP = (
    ("Fp1", "F7"), ("F7", "T3"), ("T3", "T5"), ("T5", "O1"), ("Fp2", "F8"), ("F8", "T4"), ("T4", "T6"),
    ("T6", "O2"), ("A1", "T3"), ("T3", "C3"), ("C3", "Cz"), ("Cz", "C4"), ("C4", "T4"), ("T4", "A2"),
    ("Fp1", "F3"), ("F3", "C3"), ("C3", "P3"), ("P3", "O1"), ("Fp2", "F4"), ("F4", "C4"), ("C4", "P4"),
    ("P4", "O2"),
)  # fmt: skip
EAR_ELECTRODES = ("A1", "A2")


class MontageError(ValueError):
    """The file cannot supply the montage; the message names what is missing."""


def canon(name: str) -> str:
    """An electrode's canonical token: upper case, synonyms mapped (``T7`` -> ``T3``)."""
    token = name.strip().upper()
    return ELECTRODE_SYNONYMS.get(token, token)


def referential_token(label: str) -> str | None:
    """The electrode token of a referential label (``EEG T7-REF`` -> ``T7``), else None."""
    m = _REFERENTIAL.match(label.strip().upper())
    return m.group(1) if m else None


def bipolar_pair(label: str) -> tuple[str, str] | None:
    """The canonical (first, second) electrodes of a bipolar label (``FP1-T7`` -> (``FP1``, ``T3``)), else None.
    A referential label (``C3-REF``, ``C3-Avg``) is not a pair."""
    m = _BIPOLAR.match(label.strip().upper())
    if not m or m.group(2) in REFERENCE_SUFFIXES:
        return None
    return canon(m.group(1)), canon(m.group(2))


def electrode_index(labels: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Canonical electrode -> index of its referential channel. An exact token wins over a synonym (a file with
    both ``T3`` and ``T7`` uses ``T3``); the first of repeated labels wins."""
    exact: dict[str, int] = {}
    synonym: dict[str, int] = {}
    for i, label in enumerate(labels):
        token = referential_token(label)
        if token is None:
            continue
        target = synonym if token in ELECTRODE_SYNONYMS else exact
        target.setdefault(canon(token), i)
    return {**synonym, **exact}


def pair_index(labels: tuple[str, ...] | list[str]) -> dict[tuple[str, str], int]:
    """Canonical bipolar pair -> index of the channel that stores it (first wins)."""
    out: dict[tuple[str, str], int] = {}
    for i, label in enumerate(labels):
        pair = bipolar_pair(label)
        if pair is not None:
            out.setdefault(pair, i)
    return out


@dataclass(frozen=True)
class MontagePlan:
    """How to make a montage from a file: ``sources`` are the file's channel indices to read, ``matrix`` (outputs ×
    sources) combines them; ``names`` label the outputs; ``filled`` names outputs left at zero (missing, with the
    ``zero`` policy)."""

    montage: str
    names: tuple[str, ...]
    sources: tuple[int, ...]
    matrix: np.ndarray
    filled: tuple[str, ...]

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """The montage from the source rows (sources × samples), in float64."""
        import numpy as np  # see the top

        return self.matrix @ np.asarray(rows, dtype=np.float64)


def _pair_name(a: str, b: str) -> str:
    return f"{a}-{b}"


def _labels_text(labels) -> str:
    labels = list(labels)
    return ", ".join(labels[:8]) + ("..." if len(labels) > 8 else "")


def plan(labels: tuple[str, ...] | list[str], montage: str, electrodes: tuple[str, ...],
         missing_policy: str = "fail") -> MontagePlan:
    """The plan that makes ``montage`` from a file whose channels are ``labels``.

    ``electrodes`` is the spec's electrode list (referential and average). Raises MontageError naming what is
    missing: electrodes, or the bipolar pairs that are neither stored nor derivable."""
    import numpy as np  # see the top

    labels = tuple(labels)
    elec = electrode_index(labels)
    pairs = pair_index(labels)
    if montage in ("referential", "average"):
        wanted = [canon(e) for e in electrodes]
        missing = [e for e, c in zip(electrodes, wanted, strict=True) if c not in elec]
        if len(missing) == len(electrodes):
            if pairs:
                raise MontageError(f"montage {montage!r} needs referential electrodes, but the file holds bipolar "
                                   f"channels only ({_labels_text(labels)}); use --montage double-banana")
            raise MontageError(f"none of the required electrodes is present (labels: {', '.join(labels)})")
        if missing and missing_policy != "zero":
            raise MontageError(f"missing required electrode(s) {', '.join(missing)} "
                               "(use --missing-electrodes zero to fill them with zeros)")
        sources = sorted({elec[c] for c in wanted if c in elec})
        col = {s: j for j, s in enumerate(sources)}
        matrix = np.zeros((len(wanted), len(sources)))
        present = [i for i, c in enumerate(wanted) if c in elec]
        for i in present:
            matrix[i, col[elec[wanted[i]]]] = 1.0
        if montage == "average":  # minus the mean of the electrodes present; zero-filled ones stay zero
            mean = matrix[present].mean(axis=0)
            matrix[present] -= mean
        return MontagePlan(montage, tuple(electrodes), tuple(sources), matrix, tuple(missing))
    if montage not in ("double-banana", "tcp"):
        raise MontageError(f"unknown montage {montage!r}")
    layout = DOUBLE_BANANA if montage == "double-banana" else TCP
    if montage == "tcp" and not any(canon(e) in elec or any(canon(e) in p for p in pairs) for e in EAR_ELECTRODES):
        layout = tuple(p for p in layout if not set(p) & set(EAR_ELECTRODES))  # 03_tcp_ar_a: the 20 pairs
    recipes: list[tuple[int, ...] | None] = []  # (stored,) or (first, second) channel indices
    missing: list[str] = []
    for a, b in layout:
        key = (canon(a), canon(b))
        if key in pairs:
            recipes.append((pairs[key],))
        elif key[0] in elec and key[1] in elec:
            recipes.append((elec[key[0]], elec[key[1]]))
        else:
            recipes.append(None)
            absent = [e for e in (a, b) if canon(e) not in elec]
            missing.append(f"{_pair_name(a, b)} (no {' or '.join(absent)})" if absent else _pair_name(a, b))
    if len(missing) == len(layout):
        raise MontageError(f"montage {montage!r}: none of its channels is stored or derivable "
                           f"(labels: {_labels_text(labels)})")
    if missing and missing_policy != "zero":
        raise MontageError(f"montage {montage!r}: cannot make {', '.join(missing)} "
                           "(use --missing-electrodes zero to fill them with zeros)")
    sources = sorted({i for r in recipes if r for i in r})
    col = {s: j for j, s in enumerate(sources)}
    matrix = np.zeros((len(layout), len(sources)))
    for row, recipe in enumerate(recipes):
        if recipe is None:
            continue
        matrix[row, col[recipe[0]]] = 1.0
        if len(recipe) == 2:
            matrix[row, col[recipe[1]]] = -1.0
    names = tuple(_pair_name(a, b) for a, b in layout)
    filled = tuple(_pair_name(a, b) for (a, b), r in zip(layout, recipes, strict=True) if r is None)
    return MontagePlan(montage, names, tuple(sources), matrix, filled)
