"""Typed job configuration: one pydantic tree, loaded from a YAML job file, overridden by dotted
command-line arguments (``train.epochs=2``), validated at load time.

    cfg = load_config("jobs/quickstart.yaml", ["train.epochs=2"])

Every error (missing file, bad YAML, unknown key, wrong type) is raised as :class:`ConfigError`
with a one-line message naming the file and the dotted key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A job file or an override is invalid; ``str(err)`` is a one-line message for the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RayConfig(_Strict):
    address: str | None = Field(None, description="Ray address; None starts/joins a local cluster.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a locally started cluster.")


class TrackingConfig(_Strict):
    enabled: bool = Field(True, description="Log to MLflow; False uses the do-nothing tracker.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///<storage>/mlflow.db for local storage."
    )
    experiment: str = Field("ray-distill", description="MLflow experiment name.")


class SyntheticQuestions(_Strict):
    family: str = Field("arith", description="Synthetic task family (see ray_distill.synthetic.tasks).")
    num_questions: int = Field(400, ge=1)
    min_difficulty: int = Field(1, ge=1)
    max_difficulty: int = Field(3, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _range(self) -> SyntheticQuestions:
        if self.min_difficulty > self.max_difficulty:
            raise ValueError("min_difficulty must be <= max_difficulty")
        return self


class QuestionsConfig(_Strict):
    path: str | None = Field(None, description="jsonl/parquet question file (any fsspec URL).")
    synthetic: SyntheticQuestions | None = Field(None, description="Built-in synthetic questions.")

    @model_validator(mode="after")
    def _one_source(self) -> QuestionsConfig:
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("set exactly one of 'path' or 'synthetic'")
        return self


class SamplingConfig(_Strict):
    n: int = Field(1, ge=1, description="Samples per prompt.")
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    seed: int = Field(0, description="Base seed; sample i of a question uses a seed derived from it.")


class ResourcesConfig(_Strict):
    num_actors: int = Field(1, ge=1, description="Engine actors in the pool.")
    num_cpus: float = Field(1.0, ge=0.0, description="CPUs per actor.")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per actor.")
    batch_size: int = Field(64, ge=1, description="Rows per map_batches call.")


class EngineConfig(_Strict):
    kind: Literal["scripted", "vllm"] = "scripted"
    persona: str | None = Field(None, description="Scripted persona name (engine 'scripted').")
    model: str | None = Field(None, description="HF id or local path (engine 'vllm').")
    revision: str = "main"
    dtype: str = "auto"
    max_model_len: int | None = None
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = True

    @model_validator(mode="after")
    def _needs(self) -> EngineConfig:
        if self.kind == "scripted" and not self.persona:
            raise ValueError("engine 'scripted' needs 'persona'")
        if self.kind == "vllm" and not self.model:
            raise ValueError("engine 'vllm' needs 'model'")
        return self


class TeacherConfig(_Strict):
    name: str
    engine: EngineConfig
    sampling: SamplingConfig = SamplingConfig()
    resources: ResourcesConfig = ResourcesConfig()


class StudentConfig(_Strict):
    preset: str | None = Field("tiny", description="Built-in student preset (synthetic world).")
    model: str | None = Field(None, description="HF id or path of a real student (overrides preset).")
    base_rows: int = Field(8000, ge=1, description="Single-step facts in the synthetic base pretraining (preset only).")
    base_epochs: int = Field(6, ge=0, description="Epochs of the synthetic base pretraining (preset only).")
    base_lr: float = 2e-3


class FormatConfig(_Strict):
    require_think: bool = True
    max_tokens: int = Field(512, ge=1, description="Length cap in student tokens.")


class CompressionConfig(_Strict):
    enabled: bool = True
    k: int = Field(4, ge=1, description="Student samples per question.")
    max_pass_rate: float = Field(0.5, ge=0.0, le=1.0, description="Drop questions the student solves above this.")
    min_pass_rate: float | None = Field(None, ge=0.0, le=1.0, description="Drop questions the student solves below this.")
    replay_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of too-easy questions kept anyway (rehearsal; the paper uses 0)."
    )
    temperature: float = Field(0.7, ge=0.0)
    max_tokens: int = Field(128, ge=1)


class SelectionConfig(_Strict):
    samples_per_question: int = Field(8, ge=1, description="M: teacher samples per kept question.")
    keep_per_question: int = Field(4, ge=1, description="P: farthest-apart correct trajectories kept.")
    max_questions: int | None = Field(None, ge=1, description="Cap on questions in the corpus (data budget).")
    seed: int = 0


class SmokeTestConfig(_Strict):
    enabled: bool = True
    probe_questions: int = Field(400, ge=1, description="Questions each candidate teacher answers once.")
    epochs: int = Field(12, ge=1, description="Epochs of each short SFT (the rest of the recipe is train.*).")
    batch_size: int = Field(16, ge=1, description="Global batch size of the short SFT (small: more updates).")
    lr: float = 2e-3
    suite: SuiteConfig | None = Field(
        None, description="Questions the smoke-test students are scored on; default: the in-domain eval suites."
    )


class TrainConfig(_Strict):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1, description="Global batch size in sequences.")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = 0.01
    warmup_ratio: float = Field(0.05, ge=0.0, le=1.0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    grad_clip: float = 1.0
    max_seq_len: int = Field(256, ge=8)
    seed: int = 0


class SuiteConfig(_Strict):
    name: str
    domain: Literal["in_domain", "ood"] = "in_domain"
    path: str | None = Field(None, description="Question file (any fsspec URL).")
    synthetic: SyntheticQuestions | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SuiteConfig:
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("set exactly one of 'path' or 'synthetic'")
        return self


class EvalConfig(_Strict):
    k: int = Field(4, ge=1, description="Samples per question for avg@k.")
    temperature: float = Field(0.0, ge=0.0)
    max_tokens: int = Field(128, ge=1)
    suites: list[SuiteConfig] = Field(default_factory=list)


class TuneConfig(_Strict):
    num_samples: int = Field(3, ge=1, description="Trials.")
    max_concurrent_trials: int = Field(1, ge=1)
    metric: str = Field("score", description="Trial metric to maximise (in-domain avg@k).")
    search_space: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Dotted config key -> list of choices, e.g. {'selection.keep_per_question': [1, 2, 4]}.",
    )
    search: Literal["grid", "optuna"] = "grid"


SmokeTestConfig.model_rebuild()


class JobConfig(_Strict):
    name: str = Field("ray-distill", description="Job name; outputs land under <storage>/<name>.")
    storage: str = Field("outputs", description="Root of all outputs (any fsspec URL).")
    seed: int = 0
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()
    questions: QuestionsConfig
    teachers: list[TeacherConfig] = Field(min_length=1)
    student: StudentConfig = StudentConfig()
    format: FormatConfig = FormatConfig()
    smoke_test: SmokeTestConfig = SmokeTestConfig()
    compression: CompressionConfig = CompressionConfig()
    selection: SelectionConfig = SelectionConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tune: TuneConfig = TuneConfig()

    @field_validator("storage")
    @classmethod
    def _absolute_storage(cls, v: str) -> str:
        """A local storage path is made absolute here: Ray workers do not share the driver's cwd."""
        if "://" in v and not v.startswith("file://"):
            return v.rstrip("/")
        return os.path.abspath(v.removeprefix("file://"))

    @model_validator(mode="after")
    def _unique_teachers(self) -> JobConfig:
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        return self

    @property
    def run_dir(self) -> str:
        """Where this job's outputs land: ``<storage>/<name>``."""
        return f"{self.storage.rstrip('/')}/{self.name}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=2"`` -> ``(["train", "epochs"], 2)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({_first_line(err)})") from None
    return key.strip().split("."), value


def apply_override(tree: dict, path: list[str], value: Any) -> None:
    """Set ``tree[path[0]][path[1]]... = value``; list items are addressed by index (``teachers.0.name``)."""
    node: Any = tree
    for i, part in enumerate(path[:-1]):
        nxt = _child(node, part)
        if nxt is None:
            nxt = {}
            _set_child(node, part, nxt, ".".join(path[: i + 1]))
        node = nxt
    _set_child(node, path[-1], value, ".".join(path))


def _child(node: Any, part: str) -> Any:
    if isinstance(node, list):
        return node[int(part)] if part.isdigit() and int(part) < len(node) else None
    return node.get(part) if isinstance(node, dict) else None


def _set_child(node: Any, part: str, value: Any, dotted: str) -> None:
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise ConfigError(f"override {dotted}: no list item {part!r} (list has {len(node)} items)")
        node[int(part)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise ConfigError(f"override {dotted}: {dotted.rsplit('.', 1)[0]} is not a mapping")


def load_config(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Load a YAML job file (any fsspec URL), apply dotted overrides, validate."""
    path = str(path)
    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: job file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read job file ({_first_line(err)})") from None
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({_first_line(err)})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(tree).__name__}")
    for text_override in overrides or []:
        keys, value = parse_override(text_override)
        apply_override(tree, keys, value)
    return config_from_dict(tree, source=path)


def config_from_dict(tree: dict, source: str = "<config>") -> JobConfig:
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{source}: {format_validation_error(err)}") from None


def format_validation_error(err: ValidationError) -> str:
    """One line per problem, joined by '; ': ``train.epochs: Input should be a valid integer (got 'x')``."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and not isinstance(e["input"], (dict, list)):
            msg = f"{msg} (got {e['input']!r})"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def to_flat_dict(cfg: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Flatten a config to ``{"train.epochs": 3, ...}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in cfg.model_dump(mode="json").items():
        _flatten(f"{prefix}{key}", value, out)
    return out


def _flatten(key: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{key}.{k}", v, out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            _flatten(f"{key}.{i}", v, out)
    else:
        out[key] = value


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
