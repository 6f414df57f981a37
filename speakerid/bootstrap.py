"""Bootstrap over speakers: confidence intervals for error rates, EER, minDCF and thresholds that allow for
the trials of one speaker being alike.

Trials are not independent: every trial of a speaker who is easy to imitate (a 'lamb') is hard, so a trial
list of N trials from S speakers carries far less information than N independent trials, and resampling
trials gives intervals that are too narrow. Here speakers are resampled with replacement, S of them from
the S in the list, and a trial counts once for every drawn copy of each of its speakers: c_e * c_t times for
a trial between speakers e and t drawn c_e and c_t times, c times for a trial within one speaker.

Both sides are resampled, not the enrolment speaker alone: a non-target trial depends on two speakers, and
both are draws from the population a deployment meets. Resampling the enrolment side only treats the test
speakers as fixed and understates the uncertainty of the false-acceptance rate (tests/test_thresholds.py
measures both). The speaker of a trial file is the speaker folder of the VoxCeleb layout (`speaker_of`).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Iterator, Sequence

import numpy as np

FEW_SPEAKERS = 20  # below this, intervals from a speaker bootstrap are rough; say so


def speaker_of(path: str) -> str:
    """The speaker of a trial file in the VoxCeleb layout, speaker/session/file: the first component of a
    relative path (`id10270/x6uYqmx31kE/00001.wav`, relative to the data root), and the third from last of an
    absolute one (`/data/wav/id10270/x6uYqmx31kE/00001.wav`: the folders above the speaker are the root's),
    or its first folder when it has fewer (`/id10270/00001.wav`). A path without folders is its own speaker."""
    head = path.split("/", 1)[0]
    if head not in ("", "."):
        return head
    parts = PurePosixPath(path).parts
    if not path.startswith("/"):
        return parts[0]
    parts = parts[1:]  # less the root
    return parts[-3] if len(parts) >= 3 else parts[0]


class SpeakerResampler:
    """Draws bootstrap resamples of a trial list's speakers as per-trial counts (integer weights)."""

    def __init__(self, enrol: Sequence[str], test: Sequence[str]):
        enrol_speakers = [speaker_of(p) for p in enrol]
        test_speakers = [speaker_of(p) for p in test]
        if len(enrol_speakers) != len(test_speakers):
            raise ValueError(f"{len(enrol_speakers)} enrolment and {len(test_speakers)} test files differ in number")
        self.speakers, index = np.unique(enrol_speakers + test_speakers, return_inverse=True)
        self.enrol_index, self.test_index = np.split(index, [len(enrol_speakers)])
        self.same_speaker = self.enrol_index == self.test_index
        self.flat = all("/" not in p for p in enrol)
        if self.n_speakers == 1:  # a bootstrap over one speaker gives zero-width intervals
            raise ValueError(f"every trial file is of speaker {str(self.speakers[0])!r} (see "
                             f"speakerid.bootstrap.speaker_of), so the speakers cannot be resampled: trial paths "
                             f"must be speaker/session/file (e.g. {enrol[0]}), relative to the data root or absolute")

    @property
    def n_speakers(self) -> int:
        return len(self.speakers)

    def caution(self) -> str | None:
        """A warning for the user when these trials cannot give trustworthy intervals, else None."""
        if self.flat:
            return ("trial paths have no folders, so their speakers cannot be told apart: each file counts as a "
                    "speaker of its own in the bootstrap, and intervals come out too narrow")
        if self.n_speakers < FEW_SPEAKERS:
            return f"only {self.n_speakers} speakers in the trial list: intervals over so few speakers are rough"
        return None

    def weights(self, counts: np.ndarray) -> np.ndarray:
        """Per-trial counts for speaker draw counts `counts` (one per speaker)."""
        return counts[self.enrol_index] * np.where(self.same_speaker, 1, counts[self.test_index])

    def resamples(self, n: int, seed: int, labels: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """`n` resamples (per-trial weights), drawn from `seed`; with labels, a resample that leaves no
        target or no non-target trial is drawn again (the intervals are conditional on both classes)."""
        if n < 1:
            raise ValueError(f"the number of bootstrap resamples must be >= 1, got {n}")
        rng = np.random.default_rng(seed)
        uniform = np.full(self.n_speakers, 1.0 / self.n_speakers)
        is_target = None if labels is None else np.asarray(labels).astype(bool).astype(np.int64)
        given = redrawn = 0
        while given < n:
            for counts in rng.multinomial(self.n_speakers, uniform, size=n - given):  # drawn in one call
                weights = self.weights(counts)
                # Weights are counts (>= 0): both classes are drawn when the targets' total is neither 0 nor
                # all of it. A product and a sum, where boolean masks would copy the list twice.
                targets = None if is_target is None else int(weights @ is_target)
                if targets is not None and not 0 < targets < int(weights.sum()):
                    redrawn += 1
                    continue
                given += 1
                yield weights
            if redrawn > 10 * n:
                raise ValueError(f"{redrawn} of {given + redrawn} speaker resamples lacked target or non-target "
                                 f"trials: the list's {self.n_speakers} speakers are too few to bootstrap")


def percentile_interval(values, confidence: float) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap values (percentile method, empirical quantiles without
    interpolation, so that infinite values such as an 'accept nothing' threshold stay usable); NaN when
    there are none."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [tail, 1.0 - tail], method="inverted_cdf")
    return float(lo), float(hi)
