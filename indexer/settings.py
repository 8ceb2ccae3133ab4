"""All configuration in one place.

Values come, in increasing priority, from defaults, ``DEGSEARCH_*`` environment variables and
CLI flags (the CLI passes flags as keyword overrides to :func:`get_settings`).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import re

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexer.detect import DetectionParams


# The models shipped inside the package (indexer/model/weights; MODEL_CARD.md), the default first,
# and the one used when none is named (MODEL_CARD.md says why this one).
SHIPPED_MODELS = ("balanced-5", "balanced-4", "balanced-3", "balanced-2", "balanced", "fast", "telephone", "distilled", "telephone-3", "accurate")
DEFAULT_MODEL = SHIPPED_MODELS[0]
# How a --model option reads in help texts.
MODEL_CHOICES = f"{', '.join(SHIPPED_MODELS)} or a checkpoint path"
# FAISS search-time parameters (faiss.ParameterSpace names) that ``faiss_params`` may set.
FAISS_SEARCH_PARAMS = ("nprobe", "efSearch", "k_factor_rf", "k_factor", "ht", "max_codes", "quantizer_efSearch")


class Settings(BaseSettings):
    """degsearch settings; every field can be set as ``DEGSEARCH_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="DEGSEARCH_", extra="forbid")

    # --- store -----------------------------------------------------------------------------
    store_dir: Path = Field(Path("degsearch-data"), description="Directory holding the database and FAISS index.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file degsearch.db inside store_dir. PostgreSQL works too."
    )
    faiss_factory: str = Field(
        "Flat",
        description="FAISS index factory string (inner product on L2-normalised vectors): 'Flat' (exact), "
        "'HNSW32', 'IVF1024,PQ16', ...",
    )
    faiss_params: str = Field(
        "",
        description="FAISS search parameters for approximate factories, comma-separated name=value: "
        "'efSearch=256' (HNSW), 'nprobe=64' (IVF; default 16), 'k_factor_rf=32' (refine, ...RFlat). "
        "Higher: better recall, slower (see bench/bench_search.py).",
    )

    # --- model and detection ---------------------------------------------------------------
    model: str = Field(DEFAULT_MODEL, description="'balanced-5' (balanced-4 with a type head that tells degradation types apart), 'balanced-4' (distilled + telephone-distilled + telephone-3-long as one ensemble), 'balanced-3' (distilled + two seeds of telephone-distilled), 'balanced-2' (distilled + telephone), 'balanced' (fast + telephone), 'fast', 'telephone', 'distilled', 'telephone-3' (the telephone network taught by balanced-3), 'accurate', or a path to a checkpoint file.")
    threshold: float | None = Field(None, description="Detection threshold on 1 - cosine; default: the model's calibrated one.")
    clean_quantile: float = Field(
        0.98, gt=0.5, lt=1.0,
        description="enroll-clean sets the store's detection threshold at this quantile of the reference clips' "
        "smoothed frame scores (the share of known-clean audio left below it).",
    )
    smooth_frames: int = Field(DetectionParams.smooth_frames, ge=1, description="Median filter length (frames) applied to detection scores.")
    bridge_gap_s: float = Field(DetectionParams.bridge_gap_s, ge=0, description="Gaps between detected stretches shorter than this are bridged.")
    min_segment_s: float = Field(DetectionParams.min_segment_s, ge=0, description="Detected segments shorter than this are dropped.")
    merge_gap_s: float = Field(DetectionParams.merge_gap_s, ge=0, description="Segments closer than this whose embeddings are alike (merge_similarity) "
                               "become one: a call degraded throughout is not cut at every pause (0: off).")
    merge_similarity: float = Field(DetectionParams.merge_similarity, ge=-1, le=1, description="Cosine between two close segments' embeddings above which they merge.")
    label_threshold: float = Field(0.5, description="Cosine below which a segment's nearest prototype label is 'unknown'.")

    # --- indexing --------------------------------------------------------------------------
    workers: int = Field(1, ge=1, description="Parallel decode+inference worker processes.")
    chunk_s: float = Field(60.0, gt=1, description="Long files are streamed in chunks of this many seconds.")
    batch_frames: int = Field(3000, gt=0, description="Frames per model batch.")

    # --- API -------------------------------------------------------------------------------
    api_keys: list[str] = Field(default_factory=list, description="Accepted API keys (header X-API-Key). Empty: no auth.")
    require_key_for_reads: bool = Field(False, description="Also require an API key for read endpoints.")
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Largest accepted upload.")
    max_upload_seconds: float = Field(120.0, gt=0, description="Longest accepted uploaded clip.")
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins; empty: CORS off.")
    host: str = "127.0.0.1"
    port: int = 8000

    @field_validator("faiss_params")
    @classmethod
    def _known_faiss_params(cls, value: str) -> str:
        for item in filter(None, (p.strip() for p in value.split(","))):
            match = re.fullmatch(r"(\w+)\s*=\s*([0-9.]+)", item)
            if match is None or match.group(1) not in FAISS_SEARCH_PARAMS:
                raise ValueError(f"{item!r} is not name=number with a name among {', '.join(FAISS_SEARCH_PARAMS)}")
        return value

    @property
    def detection(self) -> DetectionParams:
        """The detection settings that cut frames into segments, as one object."""
        return DetectionParams(smooth_frames=self.smooth_frames, bridge_gap_s=self.bridge_gap_s, min_segment_s=self.min_segment_s,
                               merge_gap_s=self.merge_gap_s, merge_similarity=self.merge_similarity)

    @cached_property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite inside ``store_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.store_dir / 'degsearch.db').resolve()}"

    @property
    def index_path(self) -> Path:
        """Where the FAISS index file lives."""
        return self.store_dir / "segments.faiss"


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with non-None ``overrides`` (CLI flags) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
