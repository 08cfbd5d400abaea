"""One Settings object, read from VIDSEARCH_* environment variables (or passed in by tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "Diangle/clip4clip-webvid"
# A branch, not a pin: what decides the vector space is the commit it resolves to, which the collection records
# (schema/model_key.py); if `main` moves upstream, the old index is refused, never mixed. Pin a commit with
# VIDSEARCH_MODEL_REVISION to stay on one snapshot (README, Pinning the model).
DEFAULT_MODEL_REVISION = "main"
# The experts beside appearance (ingest/experts/): speech and text are lexical (BM25 over their segments), audio is
# dense (CLAP vectors per window); appearance (CLIP4Clip) is always on and is not one of these.
EXPERT_NAMES = ("speech", "text", "audio")
DENSE_EXPERTS = ("audio",)
# Whisper for the speech expert when it loads: base (74M parameters) keeps a CPU within reach of real time; any
# Whisper checkpoint id or folder works (README, Experts). Revisions are branches unless pinned, as for CLIP.
DEFAULT_ASR_MODEL = "openai/whisper-base"
# CLAP for the audio expert: the unfused HTSAT checkpoint (the fused one wants 4-channel "fusion" features).
DEFAULT_AUDIO_MODEL = "laion/clap-htsat-unfused"


class Settings(BaseSettings):
    """Everything configurable. Pass an instance down; never read the environment deep inside."""

    model_config = SettingsConfigDict(env_prefix="VIDSEARCH_", extra="ignore")

    home: Path = Field(Path("vidsearch-data"), description="Data folder: catalog, Milvus Lite data, stored videos.")
    storage: str | None = Field(
        None, description="Where stored videos live: a folder (e.g. a shared NFS mount every host sees under the same "
        "path) or S3-compatible object storage, s3://bucket/prefix (`.[s3]`). Default: <home>/videos. README, Shared "
        "storage."
    )
    s3_endpoint_url: str | None = Field(
        None, description="Endpoint of an S3-compatible server other than AWS (e.g. http://minio:9000); credentials "
        "and region come from the usual AWS_* variables or ~/.aws."
    )
    storage_cache_gb: float = Field(
        10.0, gt=0, description="S3 storage: local copies of videos kept for decoding (<home>/cache/videos), least "
        "recently used removed past this size."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the catalog. Default: SQLite in the data folder."
    )
    milvus_uri: str | None = Field(
        None, description="Milvus server URI (e.g. http://localhost:19530). Default: embedded Milvus Lite server."
    )
    milvus_token: str | None = Field(None, description="Milvus token (user:password or API key) for a secured server.")
    milvus_lite_port: int = Field(
        0, ge=0, le=65535, description="Loopback port of the embedded Milvus Lite server (0 = pick a free one)."
    )
    collection: str = Field("vidsearch_videos", description="Milvus collection name.")
    index_type: str = Field(
        "FLAT", description="Milvus index type (FLAT is exact; see `vidsearch bench` for recall). BIN_FLAT or "
        "BIN_IVF_FLAT (a Milvus server only): binary compact mode, sign bits searched by Hamming distance in "
        "`<collection>_bits`, then an exact rerank (100 candidates unless VIDSEARCH_RERANK says otherwise)."
    )
    index_params: dict[str, int | float | str] = Field(
        default_factory=dict, description='Index build parameters as JSON, e.g. {"M": 16, "efConstruction": 200}.'
    )
    search_params: dict[str, int | float | str] = Field(
        default_factory=dict, description='Search parameters as JSON, e.g. {"ef": 128} or {"nprobe": 32}.'
    )
    rerank: int = Field(
        0, ge=0, le=16_384, description="Compact mode: ask the index for this many candidates, then re-score them "
        "exactly with their stored float vectors (0 = off). Meant for a quantized index (VIDSEARCH_INDEX_TYPE="
        "IVF_SQ8 or HNSW_SQ; IVF_RABITQ on a server); the in-memory copy is then off unless memory_index=on."
    )
    memory_index: Literal["auto", "on", "off"] = Field(
        "auto", description="Answer searches from an exact in-memory copy of the vectors (auto: only when the "
        "endpoint is Milvus Lite, whose own search is ~15x slower than numpy at 100k videos, and not in compact mode)."
    )
    model: str = Field(DEFAULT_MODEL, description="Hugging Face CLIP checkpoint id or local folder.")
    model_revision: str | None = Field(
        DEFAULT_MODEL_REVISION, description="Hub revision (commit, tag or branch) of the model; ignored for folders."
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
    frames: int = Field(12, ge=1, le=512, description="Frames sampled uniformly per video.")
    moment_seconds: float = Field(
        5.0, ge=0.5, le=600, description="Length of a moment (a window of consecutive sampled frames) in search "
        "results and the timeline. Videos longer than `frames` x half of it get a frame every half moment."
    )
    max_frames: int = Field(
        120, ge=1, le=1024, description="Most frames sampled from one long video (then spread more thinly)."
    )
    batch_size: int = Field(48, ge=1, description="Frames per model forward pass (batched across videos).")
    inference: Literal["auto", "torch", "onnx", "openvino"] = Field(
        "auto", description="What runs the CLIP towers: auto (ONNX Runtime on a CPU, PyTorch on CUDA), torch, onnx "
        "(towers exported once into the data folder), openvino (`.[openvino]`). README, Inference backends."
    )
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = Field(
        "auto", description="auto: fp32 on a CPU, fp16 on CUDA (both exact). bf16 and int8 run faster on a CPU at a "
        "small, measured cost; their vectors are not mixed with exact ones (`vidsearch reindex` to switch)."
    )
    inference_threads: int = Field(
        0, ge=0, le=1024, description="Threads of one ONNX Runtime / OpenVINO model call (0: one per core); "
        "operators run one at a time."
    )
    export_dir: Path | None = Field(
        None, description="Where exported ONNX towers are kept (default: <home>/models); one folder per checkpoint "
        "snapshot and precision."
    )
    query_cache_size: int = Field(
        256, ge=0, le=100_000, description="Text embeddings of recent queries kept in each process (0: none)."
    )
    host: str = Field("127.0.0.1", description="Address the web app binds to.")
    port: int = Field(7860, ge=1, le=65535, description="Port of the web app.")
    search_concurrency: int = Field(
        2, ge=1, le=64, description="Model calls (searches, embeddings, the timeline's on-demand frames) that run at "
        "once in the web app, HTTP API and page together; more wait their turn without holding a thread. Chosen with "
        "`vidsearch loadtest` (README, Load test)."
    )
    library_page_size: int = Field(
        50, ge=1, le=1000, description="Videos per page of the web page's Library tab, and most videos its Timeline "
        "picker offers at once (search by title for the others)."
    )
    auth: SecretStr | None = Field(
        None, description="Login for the web app: user:password (comma-separated for several) or the path of a "
        "file with one user:password per line. Unset: no login."
    )
    decode_workers: int = Field(2, ge=1, le=64, description="Workers decoding videos while the model runs.")
    decode_mode: Literal["process", "thread"] = Field(
        "process", description="Decode in worker processes (a file that hangs or crashes the decoder is stopped "
        "and fails alone) or in threads (no start-up cost, cannot be stopped)."
    )
    decode_timeout_seconds: float = Field(
        120.0, gt=0, description="Longest time one file may take to decode (process mode) before it is failed."
    )
    max_video_side: int = Field(
        8192, ge=16, description="Longest side, in pixels, of a video that will be decoded (checked on the header)."
    )
    max_duration_seconds: float = Field(6 * 3600, gt=0, description="Longest video that will be ingested.")
    max_upload_mb: int = Field(
        2048, ge=1, description="Largest video accepted by the HTTP upload (POST /api/videos), in MiB."
    )
    claim_size: int = Field(16, ge=1, description="Jobs a worker takes from the queue at once.")
    ray_actors: int | None = Field(
        None, ge=1, le=1024, description="`ingest --ray`: model actors embedding frames (unset: one per GPU of the Ray "
        "cluster, one on the CPUs without GPUs)."
    )
    ray_decode_cpus: float = Field(
        1.0, gt=0, le=64, description="`ingest --ray`: CPUs Ray reserves per decode task (fewer: more files decoded "
        "at once per node)."
    )
    max_crashes: int = Field(
        2, ge=1, le=100, description="Times the process decoding a file may die on it (a crash, the OOM killer) "
        "before the file fails. The jobs of a worker that died are retried one at a time, each decoded in a process "
        "of its own, so the file that crashed is found; a worker killed from outside fails no file."
    )
    write_batch: int = Field(32, ge=1, description="Videos written to Milvus and the catalog per write.")
    experts: str = Field(
        "speech,text,audio", description="Experts run at ingest besides appearance (always on), comma-separated: "
        "speech (what is said: Whisper or pocketsphinx), text (words on screen, RapidOCR), audio (sounds: CLAP); empty "
        "for none. See README, Experts."
    )
    expert_timeout_seconds: float = Field(
        1800.0, gt=0, description="Longest time one expert may take on one video (its own stage, apart from the "
        "decode timeout) before that expert is recorded unavailable for it."
    )
    expert_claim_size: int = Field(4, ge=1, le=64, description="Expert jobs a worker takes from the queue at once.")
    text_interval_seconds: float = Field(
        1.0, gt=0, le=60, description="The text expert reads one frame every this many seconds (text shown for "
        "twice as long is always read)."
    )
    text_max_side: int = Field(
        1280, ge=64, le=8192, description="Longer side, in pixels, of the frames the text expert reads."
    )
    live_threshold: float = Field(
        0.27, ge=-1, le=1, description="vidsearch watch: a prompt's event opens when its smoothed cosine reaches this."
    )
    live_exit_threshold: float = Field(
        0.24, ge=-1, le=1, description="vidsearch watch: an open event closes when the smoothed cosine falls below "
        "this."
    )
    live_min_seconds: float = Field(
        1.0, ge=0, le=3600, description="vidsearch watch: an event stays open at least this long (seconds)."
    )
    live_retention_days: float = Field(
        30.0, gt=0, description="Events of the streams serve watches, and their thumbnails, are removed this many days "
        "after they ended."
    )
    live_clips_max_gb: float = Field(
        20.0, gt=0, description="Recorded clips of live events kept in the library, in all: past this the oldest are "
        "deleted (with their vectors)."
    )
    live_fps: float = Field(2.0, gt=0, le=60, description="vidsearch watch: frames scored per second of each source.")
    speech_segment_seconds: float = Field(
        5.0, ge=1, le=60, description="Longest stretch of transcript stored as one speech segment (split at pauses)."
    )
    asr: Literal["auto", "whisper", "pocketsphinx"] = Field(
        "auto", description="Speech recogniser of the speech expert: auto (Whisper when its checkpoint loads, else "
        "pocketsphinx, English only), whisper or pocketsphinx."
    )
    asr_model: str = Field(DEFAULT_ASR_MODEL, description="Hugging Face Whisper checkpoint id or local folder.")
    asr_model_revision: str | None = Field(
        DEFAULT_MODEL_REVISION, description="Hub revision of the Whisper checkpoint; ignored for folders."
    )
    asr_batch_size: int = Field(4, ge=1, le=64, description="Speech chunks (up to 30 s each) Whisper decodes at once.")
    asr_word_times: bool = Field(
        False, description="Whisper: align words and split its segments at them into pieces of at most "
        "speech_segment_seconds (finer moments; about doubles Whisper's CPU time). pocketsphinx always has word times."
    )
    audio_model: str = Field(DEFAULT_AUDIO_MODEL, description="Hugging Face CLAP checkpoint id or local folder.")
    audio_model_revision: str | None = Field(
        DEFAULT_MODEL_REVISION, description="Hub revision of the CLAP checkpoint; ignored for folders."
    )
    audio_window_seconds: float = Field(
        5.0, ge=1, le=10, description="Length of the audio windows the audio expert embeds (half-overlapping)."
    )
    worker_poll_seconds: float = Field(1.0, gt=0, description="How often an idle worker looks for new jobs.")
    lease_seconds: float = Field(
        600.0, gt=0, description="How long a worker's claim on a job lasts unrenewed (it renews every third of it); "
        "past it another worker takes the job over, judged by the database's clock.",
    )
    worker_id: str | None = Field(
        None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._@-]+$",
        description="This worker's name in the queue (default: the host name). Give each container its own when "
        "containers share a host name.",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("VIDSEARCH_DEVICE must be auto, cpu, cuda or cuda:N")

    @field_validator("experts")
    @classmethod
    def _check_experts(cls, value: str) -> str:
        names = [n.strip().lower() for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n not in EXPERT_NAMES]
        if unknown:
            raise ValueError(f"VIDSEARCH_EXPERTS: unknown expert(s) {', '.join(unknown)}; known: "
                             f"{', '.join(EXPERT_NAMES)}")
        return ",".join(dict.fromkeys(names))

    @property
    def expert_names(self) -> tuple[str, ...]:
        """The experts run at ingest besides appearance, in order."""
        return tuple(n for n in self.experts.split(",") if n)

    @field_validator("auth")
    @classmethod
    def _check_auth(cls, value: SecretStr | None) -> SecretStr | None:
        # Empty means no login (e.g. VIDSEARCH_AUTH= in a compose file). The format is checked when the app starts.
        return value if value is not None and value.get_secret_value().strip() else None

    @field_validator("storage")
    @classmethod
    def _check_storage(cls, value: str | None) -> str | None:
        value = (value or "").strip()
        if not value:
            return None  # VIDSEARCH_STORAGE= in a compose file: the default
        if "://" in value and not value.startswith("s3://"):
            raise ValueError("VIDSEARCH_STORAGE must be a folder or an s3://bucket/prefix URL")
        if value.startswith("s3://") and not value[5:].strip("/"):
            raise ValueError("VIDSEARCH_STORAGE=s3:// needs a bucket: s3://bucket or s3://bucket/prefix")
        return value.rstrip("/") if value.startswith("s3://") else value

    @property
    def storage_is_remote(self) -> bool:
        """Object storage (s3://): stored videos are not local files."""
        return bool(self.storage and self.storage.startswith("s3://"))

    @property
    def storage_cache_dir(self) -> Path:
        """Local copies of remote videos for decoding (schema/storage.py, VideoCache)."""
        return self.home_dir / "cache" / "videos"

    @field_validator("collection")
    @classmethod
    def _check_collection(cls, value: str) -> str:
        # Milvus collection names: letters, digits, underscores; must not start with a digit.
        if not value or not (value[0].isalpha() or value[0] == "_") or not value.replace("_", "").isalnum():
            raise ValueError("VIDSEARCH_COLLECTION must contain only letters, digits and underscores")
        return value

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def videos_dir(self) -> Path:
        """The folder of stored videos: VIDSEARCH_STORAGE when it is a folder, else <home>/videos (with S3 storage
        nothing is stored here)."""
        if self.storage and not self.storage_is_remote:
            return Path(self.storage).expanduser().resolve()
        return self.home_dir / "videos"

    @property
    def thumbnails_dir(self) -> Path:
        """<home>/thumbnails; with a shared folder as the store (VIDSEARCH_STORAGE), inside it, so that every host
        shows every video's thumbnails (object storage keeps a copy beside the videos: ingest/thumbnails.py)."""
        if self.storage and not self.storage_is_remote and self.videos_dir != self.home_dir / "videos":
            return self.videos_dir / "thumbnails"
        return self.home_dir / "thumbnails"

    @property
    def live_dir(self) -> Path:
        """Live watching: the peak frame of every event, per source (live/<source>/...jpg)."""
        return self.home_dir / "live"

    @property
    def milvus_lite_dir(self) -> Path:
        return self.home_dir / "milvus"

    def memory_index_for(self, lite: bool) -> bool:
        """Whether searches go to the in-memory copy, given whether the endpoint is Milvus Lite. Compact mode
        (rerank > 0) exists to not hold every float vector in memory: auto leaves the copy off then."""
        return self.memory_index == "on" or (self.memory_index == "auto" and lite and self.rerank == 0)

    @property
    def memory_index_file(self) -> Path:
        return self.home_dir / "cache" / f"{self.collection}.npz"

    @property
    def checkpoint_hashes_file(self) -> Path:
        """Content hashes of local model folders' weight files, so a start re-hashes only changed files."""
        return self.home_dir / "cache" / "checkpoint-hashes.json"

    @property
    def models_dir(self) -> Path:
        """Exported inference models (ingest/backends/export.py)."""
        return self.export_dir.expanduser().resolve() if self.export_dir else self.home_dir / "models"

    @property
    def catalog_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'catalog.db'}"

    def ensure_dirs(self) -> None:
        self.videos_dir.mkdir(parents=True, exist_ok=True)
        self.thumbnails_dir.mkdir(parents=True, exist_ok=True)
        self.milvus_lite_dir.mkdir(parents=True, exist_ok=True)
