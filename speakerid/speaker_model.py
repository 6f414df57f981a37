"""A trained speaker model from Python, with no config to compose:

    import speakerid

    model = speakerid.load("best.pt")            # a checkpoint, an averaged checkpoint or a model file
    e = model.embed("a.wav")                     # [dim] float32, unit length
    E = model.embed(["a.wav", "b.flac"])         # [2, dim]
    e = model.embed(waveform, sample_rate=8000)  # numpy array or torch tensor, 1-D; resampled to the model's rate
    model.score("a.wav", "b.wav")                # cosine similarity (less the stored mean embedding, if any)
    model.verify("a.wav", "b.wav")               # Verification(score, llr, same, threshold)
    model.load_calibration("cal.json")           # from `speakerid calibrate`: score -> LLR, and a threshold
    model.save("model.pt")                       # a model file: weights, config, calibration, threshold

Audio is embedded as evaluation embeds it (`speakerid.evaluation.extract_embeddings`): whole utterances,
in batches of nearly equal length, all members cut to the shortest, which is at most `max_trim` (0.25%)
shorter than the longest; so a score here equals the score of the same pair in `speakerid evaluate`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import soundfile as sf
import torch

from speakerid.calibration import (
    SOURCE_KEYS,
    Calibration,
    check_calibration_source,
    read_calibration_file,
    read_calibration_source,
)
from speakerid.data.audio import MAX_RESAMPLE_PRODUCT, AudioError, resample_audio, resample_product
from speakerid.data.check import MIN_TRIAL_SECONDS, check_trial_audio
from speakerid.data.lists import check_files_exist, map_files
from speakerid.evaluation import ExtractionOptions, extract_embeddings
from speakerid.model_file import (
    LoadedModel,
    check_calibration,
    check_embedding_mean,
    check_threshold,
    load_extractor,
    save_model_file,
)
from speakerid.scoring import Embeddings, mean_sha256
from speakerid.thresholds import Threshold

log = logging.getLogger("speakerid")

# The rates a waveform may come at: below 1 kHz is a rate given in kHz (16 for 16000), above 768 kHz no audio
# interface records; resampling from either would allocate gigabytes.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768000

# One recording: a path to an audio file, or a 1-D waveform (numpy array or torch tensor).
Audio = Union[str, os.PathLike, np.ndarray, torch.Tensor]


def resolve_device(name: str | torch.device) -> torch.device:
    """The device `name` means: "auto" is the first GPU when there is one, else the CPU."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Verification:
    """The outcome of `SpeakerModel.verify`."""

    score: float                # cosine similarity, as `SpeakerModel.score`
    llr: float | None           # calibrated natural-log likelihood ratio; None when the model has no calibration
    same: bool | None           # score >= threshold; None when there is no threshold
    threshold: float | None     # the score threshold that decided


def load(path: str | os.PathLike, device: str | torch.device = "auto",
         options: ExtractionOptions | None = None) -> SpeakerModel:
    """The model in `path` (a training checkpoint, an averaged checkpoint or a model file), ready to embed on
    `device` ("auto": a GPU when there is one). `options` change how audio is batched (see
    `speakerid.evaluation.ExtractionOptions`; the default is evaluation's) and are `embed_files`' default, so
    mode="multicrop" gives its crops there; `embed`, `score` and `verify` take the full-utterance embedding
    either way."""
    if Path(path).is_dir():  # a run's checkpoints/ folder, say: name the files it could have meant
        found = sorted(p.name for p in Path(path).glob("*.pt"))
        raise IsADirectoryError(f"{path} is a folder, not a model file: " + (
            f"give one of its .pt files ({', '.join(found)})" if found else "it holds no .pt files"))
    return SpeakerModel(load_extractor(path), device, options)


class SpeakerModel:
    """Embeds, scores and verifies recordings with one trained model; see the module docstring."""

    def __init__(self, loaded: LoadedModel, device: str | torch.device = "auto",
                 options: ExtractionOptions | None = None):
        self.loaded = loaded
        self.extractor = loaded.extractor.eval()
        self.to(device)
        self.options = options or ExtractionOptions()  # embed_files' default: multicrop gives crops there
        self._dim: int | None = None
        self._calibration: dict[str, Any] | None = None
        self._threshold: dict[str, Any] | None = None
        self._calibration_source: dict[str, Any] | None = None  # the scores they were fitted on, when known
        self._mean: np.ndarray | None = None
        self.embedding_mean = loaded.embedding_mean  # first: the calibration is checked against its scores
        self.calibration = loaded.calibration
        self.threshold = loaded.threshold
        self._take_calibration_source(loaded.provenance.get("calibration_source"))

    def __repr__(self) -> str:
        parts = [f"{self.loaded.kind} {self.loaded.path}", f"{self.sample_rate} Hz", f"on {self.device}"]
        parts += [name for name, value in (("calibrated", self._calibration), ("threshold", self._threshold),
                                           ("mean", self._mean)) if value is not None]
        return f"SpeakerModel({', '.join(parts)})"

    def to(self, device: str | torch.device) -> SpeakerModel:
        """Move the model to `device` ("auto", "cpu", "cuda:1", ...); returns itself."""
        self.device = resolve_device(device)
        self.extractor.to(self.device)
        return self

    # ----------------------------------------------------------------------------------------- properties
    @property
    def sample_rate(self) -> int:
        """The rate the model takes; audio at other rates is resampled to it."""
        return self.loaded.sample_rate

    @property
    def embedding_dim(self) -> int:
        """The size of an embedding."""
        if self._dim is None:  # from the model itself: every encoder names its size differently
            with torch.no_grad():
                self._dim = int(self.extractor(torch.zeros(1, self.sample_rate, device=self.device)).shape[1])
        return self._dim

    @property
    def calibration(self) -> Calibration | None:
        """score -> log-likelihood ratio, or None. Set it to a `Calibration`, a dict of one, or None."""
        return None if self._calibration is None else Calibration.from_dict(self._calibration)

    @calibration.setter
    def calibration(self, value: Calibration | dict[str, Any] | None) -> None:
        if isinstance(value, Calibration):
            value = value.to_dict()
        self._calibration = None if value is None else check_calibration(value, "calibration")
        self._calibration_source = None  # set by hand: which scores it was fitted on is not known

    @property
    def threshold(self) -> dict[str, Any] | None:
        """The decision threshold, {"score", "kind", "target", ...} (`speakerid.thresholds.Threshold`), or
        None. Set it to a `Threshold`, a dict of one, or None; `verify(threshold=...)` takes a bare score."""
        return None if self._threshold is None else dict(self._threshold)

    @threshold.setter
    def threshold(self, value: Threshold | dict[str, Any] | None) -> None:
        if isinstance(value, Threshold):
            value = value.to_dict()
        self._threshold = None if value is None else check_threshold(value, "threshold")
        self._calibration_source = None

    @property
    def embedding_mean(self) -> np.ndarray | None:
        """The mean unit embedding subtracted before scoring (float64), or None."""
        return None if self._mean is None else self._mean.copy()

    @embedding_mean.setter
    def embedding_mean(self, value: Sequence[float] | np.ndarray | None) -> None:
        """A new mean changes every score: the calibration and threshold fitted on the old scores are removed,
        with a warning (load a calibration of the new scores after setting it)."""
        if value is None:
            mean = None
        else:
            values = np.asarray(value, dtype=np.float64)
            if values.ndim != 1:
                raise ValueError(f"the mean embedding must be 1-D, got shape {values.shape}")
            mean = np.array(check_embedding_mean(values.tolist(), "embedding_mean", self.embedding_dim))
        before, self._mean = (self.scoring, self.mean_sha256), mean
        if (self.scoring, self.mean_sha256) != before and self._calibrated:
            log.warning("warning: the mean embedding of %s changed (%s scores%s -> %s scores%s), and so did its "
                        "scores: the calibration and threshold fitted on the old ones no longer apply and are "
                        "removed; load a calibration of the new scores (load_calibration, or export --calibration)",
                        self.loaded.path, before[0], _short(before[1]), self.scoring, _short(self.mean_sha256))
            self._calibration = self._threshold = self._calibration_source = None

    @property
    def _calibrated(self) -> bool:
        return self._calibration is not None or self._threshold is not None

    @property
    def mean_sha256(self) -> str | None:
        """What identifies the mean embedding (`speakerid.scoring.mean_sha256`), or None without one."""
        return None if self._mean is None else mean_sha256(self._mean)

    @property
    def scoring(self) -> str:
        """The scoring of `score`, named as `speakerid evaluate` names it: cosine, or cosine_meansub."""
        return "cosine" if self._mean is None else "cosine_meansub"

    def load_calibration(self, path: str | os.PathLike) -> None:
        """Take the calibration and threshold of a calibration file (`speakerid calibrate --out cal.json`).
        Refused when the file records scores of another model (a model file and its checkpoint are one),
        scoring or mean embedding than this model's (set `embedding_mean` first when the scores were
        mean-subtracted: setting it afterwards removes them); a file that does not record them (an older
        speakerid's) is taken with a warning. A model file saved afterwards records them (provenance)."""
        calibration, threshold = read_calibration_file(path)
        source = read_calibration_source(path)
        warning = check_calibration_source(path, source, self.scoring, self.loaded.identities, self.mean_sha256)
        if warning:
            log.warning("warning: %s", warning)
        self._calibration = check_calibration(calibration.to_dict(), f"{path}: calibration")
        self._threshold = check_threshold(threshold.to_dict(), f"{path}: threshold")
        self._calibration_source = source

    def _take_calibration_source(self, source: Any) -> None:
        """A model file's record of the scores its calibration was fitted on: kept when it fits the model's
        scoring, model and mean; otherwise (a file put together by hand) the calibration and threshold are
        dropped with a warning, as load_calibration would have refused them."""
        if source is None or not self._calibrated:
            return
        where = f"{self.loaded.path} (its calibration)"
        try:
            if not (isinstance(source, dict) and all(v is None or isinstance(v, str) for v in source.values())):
                raise ValueError(f"{where}: provenance.calibration_source must be a dict of strings, got {source!r}")
            check_calibration_source(where, {**dict.fromkeys(SOURCE_KEYS), **source}, self.scoring,
                                     self.loaded.identities, self.mean_sha256)
        except ValueError as e:
            log.warning("warning: %s; the calibration and threshold are not used", e)
            self._calibration = self._threshold = None
            return
        self._calibration_source = dict(source)

    # ------------------------------------------------------------------------------------------ embedding
    def embed(self, audio: Audio | Sequence[Audio], sample_rate: int | None = None) -> np.ndarray:
        """L2-normalised float32 embeddings: [dim] for one recording, [n, dim] for a list of them. A
        recording is a path, or a 1-D waveform (numpy or torch, float in [-1, 1] or int16) at `sample_rate`."""
        sample_rate = _check_sample_rate(sample_rate)
        single = _is_one(audio)
        items = [audio] if single else list(audio)
        if not items:
            raise ValueError("no audio to embed")
        is_path = [isinstance(x, (str, os.PathLike)) for x in items]
        paths = [str(x) for x, p in zip(items, is_path) if p]
        waves = {f"<waveform {i}>": self._waveform(x, sample_rate, f"waveform {i}")
                 for i, (x, p) in enumerate(zip(items, is_path)) if not p}
        out = np.empty((len(items), self.embedding_dim), dtype=np.float32)
        full = replace(self.options, mode="full")  # crops would be computed only to be dropped
        if paths:
            out[np.flatnonzero(is_path)] = self.embed_files(paths, options=full).select(paths).full
        if waves:
            found = extract_embeddings(self.extractor, ".", list(waves), self.device, full, self.sample_rate,
                                       readers=0, waveforms=waves)
            out[np.flatnonzero(np.logical_not(is_path))] = found.select(list(waves)).full
        return out[0] if single else out

    def embed_files(self, paths: Sequence[str], root: str | os.PathLike = ".", options: ExtractionOptions | None = None,
                    progress: bool = False) -> Embeddings:
        """Embeddings of audio files, keyed by their paths relative to `root` (each file once), exactly as
        evaluation extracts them; `options` (default: this model's) may ask for multi-crop embeddings too.
        Every file is checked (exists, readable, mono, long enough, not digital silence) before any is
        embedded; files at other rates are resampled."""
        if isinstance(paths, (str, os.PathLike)):  # a str would be taken as a list of one-letter paths
            raise TypeError(f"embed_files takes a list of paths, got one path ({str(paths)!r}): give [path], or use "
                            f"embed(path) for its embedding alone")
        check_files_exist(root, list(paths), what="the audio to embed", show=10)
        check_trial_audio(root, list(paths), self.sample_rate, resample=True, what="the audio to embed")
        _refuse_silent_files(root, list(paths))
        return extract_embeddings(self.extractor, root, list(paths), self.device, options or self.options,
                                  self.sample_rate, resample=True, progress=progress)

    def _waveform(self, x: Any, sample_rate: int | None, what: str) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            x = (x.float() if x.dtype == torch.bfloat16 else x).numpy()  # numpy has no bfloat16
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{what}: expected a path, a numpy array or a torch tensor, got {type(x).__name__}")
        if x.ndim != 1:
            raise ValueError(f"{what}: a waveform is 1-D [samples], got shape {x.shape} (several recordings: give a "
                             f"list of them; several channels: mix them to one first)")
        if x.dtype == np.int16:
            x = x.astype(np.float32) / 32768.0
        elif not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{what}: samples must be float (in [-1, 1]) or int16, got {x.dtype}")
        if sample_rate is None:
            raise ValueError(f"{what}: give its sample_rate (the model takes {self.sample_rate} Hz; other rates are "
                             f"resampled)")
        if len(x) < MIN_TRIAL_SECONDS * sample_rate:
            raise ValueError(f"{what}: {len(x)} samples at {sample_rate} Hz is too short to embed (at least "
                             f"{MIN_TRIAL_SECONDS} s)")
        if not np.any(x):  # check-data's rule for a silent file
            raise ValueError(f"{what}: all samples are zero (digital silence): there is no voice to embed")
        if not np.isfinite(x).all():  # as read_full refuses for a file: the embedding would be NaN
            raise ValueError(f"{what}: {int((~np.isfinite(x)).sum())} samples are NaN or infinite")
        if sample_rate != self.sample_rate and resample_product(sample_rate, self.sample_rate) > MAX_RESAMPLE_PRODUCT:
            raise ValueError(f"{what}: {sample_rate} Hz cannot be resampled to {self.sample_rate} Hz here: the ratio of "
                             f"the rates reduces to {resample_product(sample_rate, self.sample_rate)} filter taps "
                             f"(gigabytes, seconds per call); resample it to {self.sample_rate} Hz first")
        x = np.ascontiguousarray(x, dtype=np.float32)
        return x if sample_rate == self.sample_rate else resample_audio(x, sample_rate, self.sample_rate)

    # ------------------------------------------------------------------------------------------- scoring
    def score_embeddings(self, a: np.ndarray, b: np.ndarray, names: tuple[Sequence[str], Sequence[str]] | None = None
                         ) -> float | np.ndarray:
        """Cosine similarity of embeddings (from `embed`), in float64, after subtracting the stored mean
        embedding when there is one: a float for two [dim] vectors, else one score per row of [n, dim].
        A ValueError, naming the recording (`names`: those of a's and b's rows), for a score that would not be
        finite: an embedding that is the mean itself, or a non-finite embedding."""
        a, b = np.asarray(a), np.asarray(b)
        one = a.ndim == 1 and b.ndim == 1
        a, b = np.atleast_2d(a), np.atleast_2d(b)
        if a.shape != b.shape or a.ndim != 2:
            raise ValueError(f"embeddings to score must have the same shape, [dim] or [n, dim]: {a.shape} and "
                             f"{b.shape}")
        names = names or ([f"a[{i}]" for i in range(len(a))], [f"b[{i}]" for i in range(len(b))])
        scores = np.einsum("ij,ij->i", self._scoring_vectors(a, names[0]), self._scoring_vectors(b, names[1]))
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size:  # `score >= threshold` would call a NaN "different speakers"
            raise ValueError(f"the score of {names[0][bad[0]]} and {names[1][bad[0]]} is {scores[bad[0]]} ({bad.size} "
                             f"of {len(scores)} scores not finite): the model's embeddings are not finite")
        return float(scores[0]) if one else scores

    def _scoring_vectors(self, embeddings: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """As evaluation scores: centred on the mean (when there is one), then unit vectors in float64."""
        found = Embeddings(list(names), embeddings.astype(np.float32))
        return (found if self._mean is None else found.centred(self._mean)).scoring_vectors("full")

    def score(self, a: Audio | Sequence[Audio], b: Audio | Sequence[Audio],
              sample_rate: int | None = None) -> float | np.ndarray:
        """The score of recording a against recording b (a float), or of each pair of two equally long lists
        (an array). All recordings are embedded together, batched by length."""
        if _is_one(a) != _is_one(b) or (not _is_one(a) and len(a) != len(b)):
            raise ValueError("score takes two recordings, or two lists of recordings of the same length")
        if _is_one(a):
            e = self.embed([a, b], sample_rate)
            return self.score_embeddings(e[0], e[1], ([_name(a, 0)], [_name(b, 1)]))
        e = self.embed([*a, *b], sample_rate)
        return self.score_embeddings(e[:len(a)], e[len(a):], ([_name(x, i) for i, x in enumerate(a)],
                                                             [_name(x, len(a) + i) for i, x in enumerate(b)]))

    def verify(self, a: Audio, b: Audio, sample_rate: int | None = None,
               threshold: float | None = None) -> Verification:
        """Whether a and b are the same speaker: the score, the calibrated LLR (when the model has a
        calibration) and the decision at `threshold` or else the model's stored threshold (when it has one)."""
        if not (_is_one(a) and _is_one(b)):
            raise ValueError("verify takes two recordings; use score for lists")
        if threshold is not None and not (_is_number(threshold) and math.isfinite(threshold)):
            # a NaN would reject every pair: `score >= nan` is False
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        score = self.score(a, b, sample_rate)
        calibration = self.calibration
        llr = None if calibration is None else float(calibration.llr(score))
        if threshold is None and self._threshold is not None:
            threshold = self._threshold["score"]
        same = None if threshold is None else bool(score >= threshold)
        return Verification(score, llr, same, None if threshold is None else float(threshold))

    # ------------------------------------------------------------------------------------------- saving
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write a model file (weights, config, sample rate, provenance, and the mean, calibration and
        threshold when set); an existing file is replaced only with overwrite=True."""
        provenance = {k: v for k, v in self.loaded.provenance.items() if k != "calibration_source"}
        if self._calibration_source is not None:  # which scores (scoring, model, mean) they were fitted on
            provenance["calibration_source"] = self._calibration_source
        return save_model_file(
            path, extractor_state=self.extractor.state_dict(), config=self.loaded.config,
            sample_rate=self.sample_rate, provenance=provenance,
            embedding_mean=None if self._mean is None else self._mean.tolist(), calibration=self._calibration,
            threshold=self._threshold, overwrite=overwrite)


def _check_sample_rate(rate: Any) -> int | None:
    if rate is None:
        return None
    if not (isinstance(rate, (int, np.integer)) and not isinstance(rate, (bool, np.bool_))
            and MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE):
        raise ValueError(f"sample_rate must be a whole number of Hz in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] (e.g. "
                         f"16000, not 16), got {rate!r}")
    return int(rate)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _name(audio: Audio, position: int) -> str:
    """A recording as errors name it: its path, or its place among the waveforms given (as `embed` names it)."""
    return str(audio) if isinstance(audio, (str, os.PathLike)) else f"waveform {position}"


def _refuse_silent_files(root: str | os.PathLike, paths: list[str], show: int = 10) -> None:
    """Stop with an AudioError naming the files that are digital silence (check-data's 'all samples are zero'):
    their embedding is one fixed vector, so two of them would score 1.0, the same speaker. Quiet speech is
    not zero, and a file is read only up to its first non-zero block."""
    unique = list(dict.fromkeys(paths))
    silent = [p for p, zero in zip(unique, map_files(_all_samples_zero, root, unique)) if zero]
    if silent:
        listing = "\n".join(f"  {Path(root) / p}" for p in silent[:show])
        more = f"\n  ... and {len(silent) - show} more" if len(silent) > show else ""
        raise AudioError(f"{len(silent)} of the {len(unique)} recordings to embed are digital silence (all samples "
                         f"are zero): there is no voice to embed; remove them or record again:\n{listing}{more}")


def _all_samples_zero(path: Path, block: int = 1 << 16) -> bool:
    """Whether every sample of the file is zero, check-data's rule for a silent file; False when it cannot be
    decoded (reading it for its embedding says why)."""
    try:
        with sf.SoundFile(str(path)) as f:
            return not any(np.any(samples) for samples in f.blocks(blocksize=block, dtype="float32"))
    except Exception:
        return False


def _short(sha: str | None) -> str:
    return "" if sha is None else f" of mean {sha[:12]}"


def _is_one(audio: Any) -> bool:
    """A single recording (a path or a 1-D waveform), as against a list of them."""
    if isinstance(audio, (str, os.PathLike)):
        return True
    if isinstance(audio, (np.ndarray, torch.Tensor)):
        return True  # one waveform; anything but 1-D is refused when it is read
    if isinstance(audio, (list, tuple)):
        return False
    raise TypeError(f"expected a path, a 1-D waveform or a list of them, got {type(audio).__name__}")
