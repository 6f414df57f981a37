"""What an evaluation does, as configured by the `eval` config group: the trial list, how embeddings are
extracted (`ExtractionOptions`), whether a training list's mean embedding is subtracted before scoring
(`MeanSubtractionOptions`) and whether scores are AS-normed (`ASNormOptions`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from omegaconf import OmegaConf

from speakerid.config import ConfigError, check_strip_prefix, validate_eval


@dataclass(frozen=True)
class ExtractionOptions:
    mode: str = "full"              # full, or multicrop (TaoRuijie: full utterance + num_crops crops)
    num_crops: int = 5
    crop_frames: int = 300          # 300 frames = 3 s (TaoRuijie: 300 * 160 + 240 samples)
    batch_size: int = 64            # utterances per batch
    max_batch_seconds: float = 640.0  # audio per batch, so that long files do not exhaust memory
    max_trim: float = 0.0025        # models without lengths (extraction's docstring): at most this fraction of
                                    # an utterance is cut to batch it with others
    precision: str = "fp32"         # fp32, or bf16 autocast (CUDA)
    num_workers: int | str = "auto"  # loader processes reading the files; auto: extraction.resolve_num_workers

    def __post_init__(self):
        # evaluate's rules (config.validate_eval), so that embed and the Python API refuse what it refuses
        try:
            validate_eval({"name": "options", "trials": "-", "root": "-", "embedding": asdict(self)})
        except ConfigError as e:
            raise ConfigError(str(e).removeprefix("eval.embedding.")) from None

    def cache_fields(self) -> dict[str, Any]:
        """What changes an embedding, hence the embedding cache's key (batch sizes do not)."""
        fields = {"mode": self.mode, "max_trim": self.max_trim, "precision": self.precision}
        if self.mode == "multicrop":
            fields.update(num_crops=self.num_crops, crop_frames=self.crop_frames)
        return fields


@dataclass(frozen=True)
class ASNormOptions:
    enabled: bool = False
    top_k: int = 300
    cohort_list: str | None = None  # train list `speaker path`; the cohort is one mean embedding per speaker
    cohort_root: str | None = None
    utterances_per_speaker: int | None = None  # evenly spaced subset per speaker; None = all


@dataclass(frozen=True)
class MeanSubtractionOptions:
    enabled: bool = False
    list: str | None = None         # train list `speaker path` whose mean embedding is subtracted
    root: str | None = None
    utterances_per_speaker: int | None = None  # evenly spaced subset per speaker; None = all


@dataclass(frozen=True)
class Protocol:
    """A trial list and how to score it (one file of configs/eval/)."""

    name: str
    trials: str
    root: str
    strip_prefix: str | None = None
    embedding: ExtractionOptions = field(default_factory=ExtractionOptions)
    asnorm: ASNormOptions = field(default_factory=ASNormOptions)
    mean_subtraction: MeanSubtractionOptions = field(default_factory=MeanSubtractionOptions)

    @property
    def scoring(self) -> str:
        """Short name of the scoring, used in reports and output file names: cosine, multicrop5_asnorm300..."""
        return self.scoring_with(mean_subtraction=self.mean_subtraction.enabled)

    def scoring_with(self, mean_subtraction: bool) -> str:
        """The scoring's name when a mean embedding is (or is not) subtracted: a model file's stored mean is
        subtracted with this protocol's mean subtraction off."""
        e = self.embedding
        name = "cosine" if e.mode == "full" else f"multicrop{e.num_crops}"
        if mean_subtraction:
            name += "_meansub"
        return f"{name}_asnorm{self.asnorm.top_k}" if self.asnorm.enabled else name

    @classmethod
    def from_config(cls, node: Any, key: str = "eval") -> Protocol:
        """From the `eval` config node (a DictConfig or dict), with errors that name the key."""
        d = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)
        emb = dict(d.get("embedding") or {})
        asn = dict(d.get("asnorm") or {})
        mean = dict(d.get("mean_subtraction") or {})
        unknown = (set(d) - {"name", "trials", "root", "strip_prefix", "embedding", "asnorm", "mean_subtraction",
                             "dir"}) | \
            {f"embedding.{k}" for k in set(emb) - set(ExtractionOptions.__dataclass_fields__)} | \
            {f"asnorm.{k}" for k in set(asn) - set(ASNormOptions.__dataclass_fields__)} | \
            {f"mean_subtraction.{k}" for k in set(mean) - set(MeanSubtractionOptions.__dataclass_fields__)}
        if unknown:
            raise ConfigError(f"unknown {key} keys: {', '.join(f'{key}.{k}' for k in sorted(unknown))}")
        validate_eval(d, key)
        return cls(name=d["name"], trials=d["trials"], root=d["root"],
                   strip_prefix=check_strip_prefix(d.get("strip_prefix"), f"{key}.strip_prefix"),
                   embedding=ExtractionOptions(**emb), asnorm=ASNormOptions(**asn),
                   mean_subtraction=MeanSubtractionOptions(**mean))
