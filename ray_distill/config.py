"""Typed job configuration: one pydantic tree, loaded from a YAML job file, overridden by dotted
command-line arguments (``train.epochs=2``), validated at load time.

    cfg = load_config("jobs/quickstart.yaml", ["train.epochs=2"])

Every error (missing file, bad YAML, unknown key, wrong type) is raised as :class:`ConfigError`
with a one-line message naming the file and the dotted key.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Any, Literal

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ray_distill.errors import ConfigError  # noqa: F401  (re-exported: callers import it from here)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RayConfig(_Strict):
    address: str | None = Field(None, description="Ray address; None starts/joins a local cluster.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a locally started cluster.")


class TrackingConfig(_Strict):
    enabled: bool = Field(True, description="Log to MLflow; False uses the do-nothing tracker.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite:///<storage>/mlflow.db.")
    experiment: str | None = Field(
        None, description="MLflow experiment name; default: $MLFLOW_EXPERIMENT_NAME, else 'ray-distill'.")
    log_model: bool = Field(
        True, description="Log the distilled student as an MLflow model (transformers flavour; its weights are "
        "copied into the run's artifacts), linked to its corpus dataset and eval metrics.")
    register_model: bool | str = Field(
        False, description="Also register the logged student in the Model Registry: true = under the job's "
        "name, a string = under that name.")

    @model_validator(mode="after")
    def _registry(self) -> TrackingConfig:
        if self.register_model not in (False, "") and not self.log_model:
            raise ValueError("register_model needs log_model: true (only a logged model can be registered)")
        return self


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


class DecontaminationConfig(_Strict):
    """Training questions that overlap an evaluation question are removed (see data.sources.decontaminate)."""

    enabled: bool = Field(True, description="Remove training questions that overlap any evaluation suite.")
    ngram: int = Field(
        13, ge=1, description="Word n-gram size (punctuation marks count as words); an evaluation question "
        "shorter than this is matched as a whole. Exact normalised matches are always removed.")


PromptTemplate = str | dict[str, str] | None
PROMPT_DESCRIPTION = (
    "User message built from each question: a template with {question} (e.g. '{question} Put the final answer "
    "in \\boxed{}.'), or one per task family ({family: template}, 'default' for the rest); None: the question "
    "as it is. Instructions belong here, not in the question text: decontamination compares questions only.")


def check_prompt_template(v: PromptTemplate) -> PromptTemplate:
    for name, template in ({"default": v} if isinstance(v, str) else v or {}).items():
        if template.count("{question}") != 1:
            raise ValueError(f"prompt template {name!r} must contain '{{question}}' exactly once")
    return v


# Target names a ``fields:`` mapping may set (row field <- the file's column). The first six are question
# columns; correct_answer/incorrect_answers build a multiple-choice question (preset gpqa), date is what a
# suite's date window compares (preset code).
FIELD_TARGETS = ("question", "answer", "question_id", "tests", "family", "difficulty",
                 "correct_answer", "incorrect_answers", "date")
LIST_TARGETS = ("incorrect_answers",)
FIELDS_DESCRIPTION = (
    "Where each row field comes from in the file: {target: column}, e.g. {question: problem, answer: solution, "
    f"question_id: id, tests: input_output}}; targets: {', '.join(FIELD_TARGETS)} (incorrect_answers: a list of "
    "columns). Unmapped targets are read from the column of their own name.")
ANSWER_FROM_DESCRIPTION = (
    "field: the answer column as it is; last_boxed: the content of its last \\boxed{} (a worked solution, as in "
    "NuminaMath or s1K); a row without one is rejected (reason no_boxed_answer), never guessed.")


def check_fields(v: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
    for target, column in v.items():
        if target not in FIELD_TARGETS:
            raise ValueError(f"unknown target field {target!r}; known: {', '.join(FIELD_TARGETS)}")
        columns = column if isinstance(column, list) else [column]
        if isinstance(column, list) and target not in LIST_TARGETS:
            raise ValueError(f"fields.{target}: one column name, got a list")
        if not columns or not all(isinstance(c, str) and c.strip() for c in columns):
            raise ValueError(f"fields.{target}: column names must be non-empty strings, got {column!r}")
    return v


class _FileSource(_Strict):
    """How a question file's records become question rows (shared by the training source and the suites)."""

    fields: dict[str, str | list[str]] = Field(default_factory=dict, description=FIELDS_DESCRIPTION)
    answer_from: Literal["field", "last_boxed"] = Field("field", description=ANSWER_FROM_DESCRIPTION)

    _fields = field_validator("fields")(check_fields)

    def _check_file_options(self) -> None:
        if getattr(self, "synthetic", None) is not None and (self.fields or self.answer_from != "field"):
            raise ValueError("'fields' and 'answer_from' apply to a question file ('path'), not to synthetic questions")
        choices = [t for t in ("correct_answer", "incorrect_answers") if t in self.fields]
        if choices and getattr(self, "preset", None) != "gpqa":
            raise ValueError(f"fields.{choices[0]} builds multiple-choice questions: a suite with preset gpqa")


class QuestionsConfig(_FileSource):
    path: str | None = Field(
        None, description="jsonl/parquet question file (any fsspec URL, e.g. hf://datasets/<org>/<name>/<file>).")
    synthetic: SyntheticQuestions | None = Field(None, description="Built-in synthetic questions.")
    prompt: PromptTemplate = Field(None, description=PROMPT_DESCRIPTION)
    decontamination: DecontaminationConfig = Field(
        DecontaminationConfig(), description="Overlap check against the evaluation suites.")

    _prompt = field_validator("prompt")(check_prompt_template)

    @model_validator(mode="after")
    def _one_source(self) -> QuestionsConfig:
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("set exactly one of 'path' or 'synthetic'")
        self._check_file_options()
        return self


class SamplingConfig(_Strict):
    n: int = Field(1, ge=1, description="Samples per prompt.")
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    seed: int = Field(0, description="Base seed; sample i of a question uses a seed derived from it.")
    stop: list[str] = Field(default_factory=list, description="Stop strings (not included in the completion).")


class ResourcesConfig(_Strict):
    num_actors: int = Field(1, ge=1, description="Engine actors in the pool.")
    num_cpus: float = Field(1.0, ge=0.0, description="CPUs per actor.")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per actor.")
    batch_size: int = Field(
        256, ge=1,
        description="Rows per map_batches call (a store row is one request). A vLLM engine keeps "
        "engine.max_concurrent_batches of them in flight and frees a batch's slot when its longest request ends; "
        "with engine.max_concurrent_batches=0 each batch is one synchronous wave and the engine idles in its tail "
        "(benchmarks/generation.py --long-tail compares both with bare vLLM).",
    )
    custom_resources: dict[str, float] = Field(
        default_factory=dict, description="Extra Ray resources each actor requests, e.g. {generation: 8} so that an "
        "engine lands on the node type that offers them (cluster/*.yaml; `ray-distill plan` checks that one holds it).")


# What api_key_env accepts: an environment variable name as people write them (HF_TOKEN, OPENAI_API_KEY). Keys
# (hf_..., gsk_..., fw_..., sk-..., all alphanumeric) have lower-case letters or dashes and never match.
ENV_VAR_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def looks_like_env_var_name(name: str) -> bool:
    """``^[A-Z][A-Z0-9_]*$``, and not 16+ characters without an underscore (an upper-case key such as an AWS
    access key id, AKIA...)."""
    return bool(ENV_VAR_NAME.fullmatch(name)) and ("_" in name or len(name) < 16)


class EngineConfig(_Strict):
    # inputs stay out of error texts: a key pasted into api_key_env must not reach a log
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)

    kind: Literal["scripted", "vllm", "openai", "hf"] = Field(
        "scripted", description="scripted persona, vLLM in the actor, an OpenAI-compatible endpoint, or transformers."
    )
    persona: str | None = Field(None, description="Scripted persona name (engine 'scripted').")
    model: str | None = Field(
        None, description="Hub id (org/name, loaded through Hugging Face's cache on every node), local path or URL "
        "(engines 'vllm', 'hf'); the served model name (engine 'openai')."
    )
    preset: str | None = Field(
        None, description="Built-in pretrained model instead of 'model' (engines 'vllm', 'hf'), e.g. smollm2-135m; "
        "built once into <storage>/cache/models (the job then sets 'model' to that copy).")
    revision: str = Field("main", description="Hub revision (branch, tag or commit) of a hub-id model.")
    chat_template: str | None = Field(
        None, description="Chat template replacing the model's own: a Jinja string or a file (any fsspec URL).")
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra variables for the chat template, e.g. {enable_thinking: true}.")
    dtype: str = Field("auto", description="Weights dtype (engines 'vllm', 'hf'), e.g. float32, bfloat16.")
    max_model_len: int | None = None
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = True
    base_url: str | None = Field(None, description="Endpoint, e.g. http://host:8000/v1 (engine 'openai').")
    api_key_env: str | None = Field(
        None, description="NAME of the environment variable that holds the API key (engine 'openai'); None: no key."
    )
    api: Literal["chat", "completions"] = Field(
        "chat", description="'chat' applies the chat template (a server's, or the model's own for vllm/hf); "
        "'completions' sends the question text as a raw prompt"
    )
    max_concurrency: int = Field(
        16, ge=1, description="Requests in flight per engine actor (engine 'openai'), across all its batches: a "
        "finished request's slot starts the next one of any batch.")
    max_concurrent_batches: int = Field(
        8, ge=0, description="Batches in flight per engine actor (engine 'vllm'). Their requests share one "
        "continuously batched engine: each step runs the unfinished requests of all of them and a finished "
        "request's place is taken at the next step. A batch is replaced only when its longest request ends, so "
        "with long-tailed lengths only a fraction of its requests runs most of the time: keep batch_size x "
        "max_concurrent_batches several times vLLM's max_num_seqs (256 by default) to keep the engine full "
        "(benchmarks/generation.py --long-tail). 0: the synchronous path, one batch at a time as one "
        "LLM.generate wave. Engine 'openai': batches in flight per actor too, their requests sharing the actor's "
        "max_concurrency slots; 0: one batch at a time.")
    stall_timeout_s: float | None = Field(
        900.0, gt=0, description="Engine 'vllm' with max_concurrent_batches > 0: when requests wait and no engine "
        "step finishes for this long (a hung step), the engine's process exits and Ray restarts its actor and "
        "sends its batches again (at most 3 restarts of an engine host); None: never.")
    long_lived: bool = Field(
        True, description="Engine 'vllm' with max_concurrent_batches > 0: served by long-lived engine hosts (Ray "
        "actors holding the engine's resources) that the job's next stages reuse, the model swapped in place (~3 s "
        "on CPU, vs ~13 s for a fresh actor importing vLLM); idle hosts are released before Ray Train, "
        "lm-evaluation-harness or an engine of another shape needs their resources. false: a fresh engine actor "
        "pool per stage (ray_distill.generation.hosts).")
    request_timeout_s: float = Field(600.0, gt=0, description="Timeout of one request (engine 'openai').")
    max_retries: int = Field(5, ge=0, description="Retries on 429/5xx/connection errors (engine 'openai').")
    retry_backoff_s: float = Field(
        1.0, gt=0, description="First retry delay; doubles per retry, with jitter, at most max_retry_wait_s "
        "(engine 'openai'). A server's Retry-After / retry-after-ms (seconds, milliseconds or an HTTP date) "
        "replaces it.")
    max_retry_wait_s: float = Field(
        120.0, gt=0, description="Longest wait before one retry (engine 'openai'): caps the backoff and a server's "
        "Retry-After (a longer one is waited this long, then the request is retried).")
    stop_error_rate: float | None = Field(
        0.9, gt=0.0, le=1.0, description="Stop the job when at least this share of the engine's first error_window "
        "requests failed after their retries (engine 'openai'; each actor counts its own): a wrong model name or a "
        "dead endpoint stops in one line instead of filling the rejects. None: never; failed requests become "
        "rejected samples, generated again by a rerun.")
    error_window: int = Field(32, ge=1, description="Requests stop_error_rate looks at: each engine actor's first "
                              "this many (engine 'openai'); later failures never stop the job.")
    requests_per_minute: float | None = Field(
        None, gt=0, description="Requests per minute sent to the endpoint by all engine actors of this teacher "
        "together (engine 'openai'; one shared limiter per endpoint, model and key variable); None: no limit.")
    tokens_per_minute: float | None = Field(
        None, gt=0, description="Prompt + completion tokens per minute of all engine actors of this teacher together "
        "(engine 'openai'; counted from each reply, so it can overshoot by the requests in flight); None: no limit.")
    tokenizer: str | None = Field(
        None, description="Tokenizer (hub id, path or URL) that counts a reply's tokens when the server sends no "
        "usage (engine 'openai'); None: an estimate of one token per 3 bytes of UTF-8, which over-counts English.")

    @model_validator(mode="after")
    def _needs(self) -> EngineConfig:
        if self.kind == "scripted" and not self.persona:
            raise ValueError("engine 'scripted' needs 'persona'")
        if self.kind == "openai" and not self.model:
            raise ValueError("engine 'openai' needs 'model'")
        if self.kind in ("vllm", "hf") and self.model is None and self.preset is None:
            raise ValueError(f"engine '{self.kind}' needs 'model' or 'preset'")
        if self.kind == "openai" and not self.base_url:
            raise ValueError("engine 'openai' needs 'base_url'")
        if self.kind in ("openai", "scripted") and (self.chat_template or self.preset):
            raise ValueError(f"engine '{self.kind}' takes no 'chat_template' or 'preset' (a server applies its own "
                             "template; set chat_template_kwargs for its variables)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _key_variable_name(cls, data: Any) -> Any:
        # Checked on the engine's whole input, before any field: an error then carries the engine's mapping as
        # its input, which is never echoed, while a field's own error would end in "(got '<the key>')".
        value = data.get("api_key_env") if isinstance(data, dict) else None
        if value is None or (isinstance(value, str) and looks_like_env_var_name(value)):
            return data
        raise ValueError("api_key_env must be the NAME of an environment variable (upper-case letters, digits and _, "
                         "e.g. TEACHER_API_KEY), not its value: a key seems to have been pasted in place of a variable "
                         "name (not shown); put the key in that variable and name the variable here")


class CostConfig(_Strict):
    """What a teacher's tokens cost, for dry-run estimates and accounting (0 = free)."""

    per_million_tokens: float = Field(0.0, ge=0.0, description="Price per million completion tokens (hosted APIs).")
    per_gpu_hour: float = Field(0.0, ge=0.0, description="Price of one GPU-hour (self-hosted vLLM).")
    tokens_per_s_per_actor: float | None = Field(
        None, gt=0.0, description="Measured completion tokens/s of one engine actor (turns tokens into GPU-hours)."
    )


def check_tensor_parallel(tp: int, resources: ResourcesConfig) -> None:
    """vLLM's tensor-parallel workers run inside the engine actor (multiprocessing executor), on the GPUs
    Ray gave that actor, which are always on one node: so an actor needs exactly ``tp`` GPUs."""
    if tp > 1 and resources.num_gpus != tp:
        raise ValueError(f"tensor_parallel_size {tp} needs resources.num_gpus: {tp} per engine actor "
                         f"(got {resources.num_gpus:g}): the {tp} vLLM workers run inside the actor, on its GPUs")


class TeacherConfig(_Strict):
    name: str
    engine: EngineConfig
    sampling: SamplingConfig = SamplingConfig()
    resources: ResourcesConfig = ResourcesConfig()
    cost: CostConfig = CostConfig()

    @model_validator(mode="after")
    def _placement(self) -> TeacherConfig:
        if self.engine.kind == "vllm":
            check_tensor_parallel(self.engine.tensor_parallel_size, self.resources)
        return self


class StudentServingConfig(_Strict):
    """The student's vLLM engine and actors (compression, smoke-test and final evaluation sampling)."""

    resources: ResourcesConfig = Field(
        ResourcesConfig(), description="Engine actors; on GPU clusters num_gpus = tensor_parallel_size.")
    tensor_parallel_size: int = Field(1, ge=1, description="Tensor parallelism of the student's vLLM engine.")
    max_model_len: int | None = Field(None, ge=1, description="Context of the student's vLLM engine (default: the model's).")
    long_lived: bool = Field(
        True, description="Long-lived engine hosts for the student (engine.long_lived): the smoke test's students, "
        "compression's base student and the evaluated models swapped into one warm engine in turn; false: a fresh "
        "engine actor pool per model, the models of a stage sampled concurrently.")

    @model_validator(mode="after")
    def _placement(self) -> StudentServingConfig:
        check_tensor_parallel(self.tensor_parallel_size, self.resources)
        return self


class StudentConfig(_Strict):
    preset: str | None = Field(
        "tiny", description="Built-in student: a synthetic preset (tiny, micro; pretrained once on the synthetic "
        "world) or a pretrained one (smollm2-135m).")
    model: str | None = Field(
        None, description="Hub id (org/name, loaded through Hugging Face's cache on every node), local path or URL "
        "of a real student (overrides preset).")
    revision: str = Field("main", description="Hub revision (branch, tag or commit) of a hub-id student.")
    chat_template: str | None = Field(
        None, description="Chat template replacing the student's own, for sampling and training (a Jinja string "
        "or a file, any fsspec URL); the exported student carries it. Must keep <think>...</think> in assistant "
        "turns (checked before training).")
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra variables for the student's chat template when sampling.")
    base_rows: int = Field(8000, ge=1, description="Single-step facts in the synthetic base pretraining (preset only).")
    base_chains: int = Field(
        0, ge=0, description="Multi-step min(...) chains (a family no question, suite or teacher uses) added to the "
        "synthetic base pretraining (preset only): the base arrives knowing how to restate operands step by step, "
        "as a pretrained model does, and distillation then teaches arith chains in ~500 optimizer steps instead of "
        "an initialisation-dependent jump between ~1,000 and ~2,000 (synthetic.tasks.base_chain_corpus).")
    base_epochs: int = Field(6, ge=0, description="Epochs of the synthetic base pretraining (preset only).")
    base_lr: float = 2e-3
    serving: StudentServingConfig = Field(
        default_factory=lambda: StudentServingConfig(),
        description="How the student is served by vLLM whenever it is sampled (compression, smoke test, evaluation).")


class CodeGraderConfig(_Strict):
    """Limits of the sandbox that runs code answers against their tests (see curation.sandbox)."""

    timeout_s: float = Field(5.0, gt=0, description="Wall-clock seconds per test (CPU seconds: this + 1).")
    memory_mb: int = Field(1024, ge=64, description="Address-space cap of the program, in MiB.")
    max_processes: int = Field(16, ge=1, description="Processes and threads the program may run at once.")
    max_output_bytes: int = Field(1 << 20, ge=1024, description="Cap on stdout, stderr and any file written.")
    max_open_files: int = Field(64, ge=16, description="Open file descriptors.")
    max_tmp_bytes: int = Field(16 << 20, ge=1 << 16, description="Cap on all the program writes to its private /tmp "
                               "(its working directory) and, as much again, to its /dev/shm (tmpfs of this size).")
    backend: Literal["auto", "bwrap", "unshare"] = Field(
        "auto", description="Namespace tool: auto = bwrap >= 0.8.0 (a read-only view with nothing of the host but the "
        "system and Python directories), refusing to run when it does not work here; unshare (the same view, built "
        "as root) only when set explicitly, and only for a root caller. See docs/sandbox.md.")
    python: str | None = Field(None, description="Interpreter inside the sandbox; default: this one or python3.")
    node_concurrency: int | None = Field(
        None, ge=1, description="Programs running at once on a node, across all its grader actors and threads "
        "(default: the node's cores), so that timeout_s measures the program, not a queue of others.")


class FormatConfig(_Strict):
    require_think: bool = True
    max_tokens: int = Field(512, ge=1, description="Length cap in student tokens.")
    code: CodeGraderConfig = Field(CodeGraderConfig(), description="Sandbox limits for questions with tests.")
    num_graders: int | None = Field(
        None, ge=1, description="Largest size of the grader actor pool (default: one per CPU of the cluster; the pool "
        "starts with one actor and grows while rows wait).")


JUDGE_PLACEHOLDERS = ("question", "reference", "answer")  # filled by curation.judge.render_judge_prompt


def check_judge_prompt(template: str) -> str:
    """``template`` when it holds ``{reference}`` and ``{answer}`` exactly once and ``{question}`` at most once."""
    for name in JUDGE_PLACEHOLDERS:
        count = template.count("{" + name + "}")
        if count > 1 or (count == 0 and name != "question"):
            raise ValueError(f"judge prompt must contain '{{{name}}}' {'at most' if name == 'question' else 'exactly'} "
                             f"once (found {count})")
    return template


class JudgeConfig(_Strict):
    """The LLM judge (``verify.judge``): a second check of teacher answers against the reference, on any engine
    (see curation.judge). Its verdicts are cached in the generation store under its ``name``."""

    mode: Literal["off", "fallback", "always"] = Field(
        "off", description="fallback: judge only rows math-verify could not decide (no final answer parsed, or a "
        "reference that is not a math expression); always: every row whose format passed; off: no judge. Code "
        "rows (with tests) are never judged.")
    name: str = Field("judge", description="Its directory in the generation store; must not be a teacher's name.")
    engine: EngineConfig | None = Field(None, description="The judge's engine (any kind, as a teacher's).")
    sampling: SamplingConfig = Field(
        SamplingConfig(temperature=0.0, max_tokens=256), description="Judge sampling (n is always 1).")
    resources: ResourcesConfig = Field(ResourcesConfig(batch_size=64), description="The judge's actor pool.")
    cost: CostConfig = CostConfig()
    prompt: str | None = Field(
        None, description="Judge prompt template with {reference} and {answer} (exactly once) and {question} (at "
        "most once); the reply must end with a line 'VERDICT: CORRECT' or 'VERDICT: INCORRECT'. None: the built-in "
        "template (curation.judge.DEFAULT_JUDGE_PROMPT).")
    agree: Literal["either", "both"] = Field(
        "both", description="mode always, rows math-verify decided: keep only rows both checks accept (both: the "
        "judge can veto a math-verify 'correct' but never overrides its 'wrong'), or a row either accepts (either: the "
        "judge also rescues answers math-verify rejected, e.g. equivalent forms it cannot parse; it can then accept "
        "wrong ones). Rows math-verify could not decide are the judge's alone in both.")

    @field_validator("prompt")
    @classmethod
    def _placeholders(cls, v: str | None) -> str | None:
        return None if v is None else check_judge_prompt(v)

    @model_validator(mode="after")
    def _needs_engine(self) -> JudgeConfig:
        if self.mode != "off" and self.engine is None:
            raise ValueError(f"judge mode {self.mode!r} needs 'engine'")
        return self

    def as_teacher(self) -> TeacherConfig:
        """The judge as a one-sample teacher: the generation machinery (engines, actors, store keys, cost) as is."""
        if self.engine is None:
            raise ValueError("judge has no engine")
        return TeacherConfig(name=self.name, engine=self.engine, sampling=self.sampling.model_copy(update={"n": 1}),
                             resources=self.resources, cost=self.cost)


class VerifyConfig(_Strict):
    judge: JudgeConfig = Field(JudgeConfig(), description="LLM judge after math-verify (off by default).")


class CompressionConfig(_Strict):
    enabled: bool = True
    order: Literal["compress_first", "paper"] = Field(
        "compress_first",
        description="compress_first: the student's pass rates filter questions before the teacher samples M "
        "solutions (no teacher tokens on questions that are dropped); paper: sample M for every question, "
        "then compress (the paper's order, for comparison).",
    )
    k: int = Field(4, ge=1, description="Student samples per question.")
    max_pass_rate: float = Field(0.5, ge=0.0, le=1.0, description="Drop questions the student solves above this.")
    min_pass_rate: float | None = Field(None, ge=0.0, le=1.0, description="Drop questions the student solves below this.")
    replay_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of too-easy questions kept anyway (rehearsal; the paper uses 0)."
    )
    temperature: float = Field(0.7, ge=0.0)
    max_tokens: int = Field(128, ge=1)

    @model_validator(mode="after")
    def _sampled(self) -> CompressionConfig:
        check_not_greedy_repeats(self.k, self.temperature, "compression")
        return self


def check_not_greedy_repeats(k: int, temperature: float, where: str) -> None:
    """k > 1 samples at temperature 0 are k copies of one greedy answer: a pass rate or avg@k over them is one
    sample's, reported as k. Refused, in one line that says what to set."""
    if k > 1 and temperature == 0:
        raise ValueError(f"{where}: k={k} samples at temperature 0 are {k} copies of one greedy answer; "
                         "set k: 1 or a temperature > 0")


class AdaptiveConfig(_Strict):
    """Sample each kept question in rounds and stop it early (see ray_distill.curation.adaptive)."""

    enabled: bool = Field(False, description="Sample in rounds; False samples all M at once.")
    round_size: int | None = Field(
        None, ge=1, description="Samples added per question in each round after the first (which draws "
        "min_samples); default: P.")
    min_samples: int | None = Field(
        None, ge=2, description="Floor: samples a question has before it can stop as enough; must exceed P. "
        "Default: 2P (at most M).")
    enough_margin: int = Field(
        2, ge=1, description="A question stops as enough once it has P + enough_margin distinct correct "
        "trajectories (among at least min_samples samples), so farthest-P selection has more than P to choose "
        "from; one that cannot get there stops at M with what it has.")
    hopeless_after_rounds: int | None = Field(
        2, ge=1, description="Stop a question with no correct sample after this many rounds (None: never).")
    stop_when_saturated: bool = Field(
        True, description="Stop a question when a round adds no new distinct correct trajectory.")


class SelectionConfig(_Strict):
    samples_per_question: int = Field(8, ge=1, description="M: teacher samples per kept question (at most, when adaptive).")
    keep_per_question: int = Field(4, ge=1, description="P: farthest-apart correct trajectories kept.")
    max_questions: int | None = Field(
        None, ge=1, description="Data budget: the first this many questions kept by compression are sampled (a "
        "question without a verified-correct sample adds no corpus row); the same in a tune trial and a job.")
    seed: int = 0
    adaptive: AdaptiveConfig = AdaptiveConfig()

    @model_validator(mode="after")
    def _floor_between_p_and_m(self) -> SelectionConfig:
        floor = self.adaptive.min_samples
        if floor is not None and not self.keep_per_question < floor <= self.samples_per_question:
            raise ValueError(f"adaptive.min_samples={floor} must exceed keep_per_question (P="
                             f"{self.keep_per_question}) and be at most samples_per_question (M={self.samples_per_question})")
        return self


class AblationCurveConfig(_Strict):
    """The data-efficiency curve of ``ray-distill ablate``: DED at N rows vs random verified-correct rows
    at k x N, every arm at the same number of optimizer steps (see ray_distill.ablation)."""

    multiples: list[int] = Field(
        [1, 2, 4, 8], min_length=1, description="The k of the random verified-correct arms (k x N rows, "
        "train.epochs / k epochs: the same optimizer steps as DED at N rows). train.epochs must be divisible by each.")

    @field_validator("multiples")
    @classmethod
    def _ascending(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v) or sorted(set(v)) != v:
            raise ValueError(f"ablation.curve.multiples must be distinct ascending integers >= 1, got {v}")
        return v


class AblationConfig(_Strict):
    """``ray-distill ablate``: the paper's ablation at an equal training budget (see ray_distill.ablation)."""

    moves: bool = Field(
        True, description="Run the per-move arms (random, +correct, +compressed, DED, the best-accuracy teacher); "
        "false runs only the data-efficiency curve.")
    curve: AblationCurveConfig | None = Field(
        None, description="The data-efficiency curve (DED at N vs random verified-correct at k x N); None: no curve.")

    budget_rows: int | None = Field(
        None, ge=1, description="Training rows of every arm (default: the size of the full DED corpus).")
    seeds: list[int] = Field(
        [0], min_length=1, description="Repeats of every arm: each seed draws the arm's rows and orders its "
        "training (train.seed); the summary gives the mean and spread over seeds.")

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"ablation seeds must be distinct, got {v}")
        return v

    @model_validator(mode="after")
    def _something_to_run(self) -> "AblationConfig":
        if not self.moves and self.curve is None:
            raise ValueError("ablation.moves is false and ablation.curve is not set: there is no arm to run")
        return self


class BudgetConfig(_Strict):
    """Caps on teacher tokens; checked before spending (dry-run estimates) and while sampling."""

    max_teacher_tokens: int | None = Field(
        None, ge=1, description="Teacher completion tokens the whole job may spend (probe + M-sample generation); "
        "checked before each generation call on its expected spend, so the actual spend may pass it by the "
        "estimate's error.")
    max_teacher_tokens_per_question: int | None = Field(
        None, ge=1, description="Teacher completion tokens one question may take in the M-sample generation.")


class SmokeTestConfig(_Strict):
    """Teacher selection: each candidate's student is fine-tuned briefly on the same number of its verified
    probe answers and scored on the dev suite (``dev``); the best student wins (see curation.smoke_test)."""

    enabled: bool = Field(
        True, description="Run the smoke test; False ranks the candidates by their own probe accuracy (said so "
        "in the ranking table, column ranked_by).")
    probe_questions: int = Field(400, ge=1, description="Questions each candidate teacher answers once.")
    min_verified: float = Field(
        0.1, gt=0, description="Floor of verified probe rows a candidate needs to be trained: a share of "
        "probe_questions below 1, a count from 1 on. Every trained candidate gets as many rows as the weakest one "
        "above the floor; one below it ranks last with its reason instead of starving the others.")
    epochs: int = Field(12, ge=1, description="Epochs of each short SFT (the rest of the recipe is train.*).")
    batch_size: int = Field(16, ge=1, description="Global batch size of the short SFT (small: more updates).")
    lr: float = 2e-3


class TrainConfig(_Strict):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel ranks).")
    use_gpu: bool = Field(False, description="One GPU per worker (NCCL); False trains on CPUs (gloo).")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs per worker (also its torch threads).")
    epochs: int = Field(3, ge=1)
    schedule_epochs: int | None = Field(
        None, ge=1, description="Epochs the learning-rate schedule spans (default: epochs). A Tune trial trains in "
        "rungs of growing epochs on one run; it sets this to its maximum so the rungs continue one schedule.")
    batch_size: int = Field(32, ge=1, description="Global batch size in sequences (examples per optimiser step).")
    grad_accum_steps: int = Field(
        1, ge=1, description="Micro-steps per optimiser step; each worker's share of a batch is split this many ways."
    )
    lr: float = Field(2e-3, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.01, description="AdamW weight decay (matrices only).")
    warmup_ratio: float = Field(0.05, ge=0.0, le=1.0, description="Share of steps of linear warmup.")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Cosine decay ends at this share of the peak lr.")
    grad_clip: float = Field(1.0, description="Gradient-norm clipping threshold.")
    max_seq_len: int = Field(256, ge=8, description="Tokens per example (longer ones are cut) and per packed row.")
    packing: bool = Field(
        False,
        description="Pack several examples into rows of max_seq_len (attention kept per example); "
        "False pads length-bucketed batches.",
    )
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="Data parallelism: DDP, or FSDP2 (sharded).")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="Compute dtype. bf16: DDP autocasts; FSDP computes with bf16 weights gathered from its "
        "shards (gradients reduced in fp32). fp32: plain fp32. The stored weights' dtype is param_dtype.")
    param_dtype: Literal["fp32", "bf16"] = Field(
        "fp32", description="Dtype of the trained (sharded) parameters and their gradients. fp32: fp32 master weights "
        "(AdamW: 16 bytes/param = 4 param + 4 grad + 8 moments). bf16 (needs precision bf16): bf16 parameters and "
        "gradients with fp32 Adam moments (12 bytes/param); the update is computed in fp32 and written back with "
        "stochastic rounding, so updates below bf16's resolution (lr 1e-5) are kept in expectation. DDP then "
        "all-reduces bf16 gradients.")
    reduce_every_micro_step: bool = Field(
        True, description="FSDP: reduce-scatter gradients after every accumulation micro-step, so only sharded "
        "gradients are kept (False skips the sync until the last micro-step: less communication, but an unsharded "
        "gradient copy on every rank). DDP skips the all-reduce on accumulation micro-steps either way.")
    cpu_offload: bool = Field(
        False, description="FSDP: keep the sharded parameters, gradients and optimizer state in host memory "
        "(FSDP2 CPUOffloadPolicy); layers are copied to the device for compute and the optimizer step runs on CPU.")
    shard_size: int | None = Field(
        None, ge=1, description="FSDP: shard over groups of this many workers (e.g. 8, one node) and replicate across "
        "the groups (HSDP, a 2-D device mesh); num_workers must be a multiple. None: shard over all workers.")
    custom_resources: dict[str, float] = Field(
        default_factory=dict, description="Extra Ray resources each training worker requests besides its CPUs (and "
        "GPU), e.g. {training: 1} so that trainers land on the cluster's training node type.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    attn_implementation: str = Field(
        "auto", description="Attention kernel of the student (transformers' attn_implementation): auto (resolved on "
        "each worker: flash_attention_2 on a CUDA device when the flash_attn package imports, else sdpa), sdpa, "
        "eager, or flash_attention_2 (GPU; packed rows then go as one varlen row per micro-batch).")
    loss_chunk_tokens: int | None = Field(
        1024, ge=1, description="Supervised tokens per chunk of the cross-entropy (logits are computed chunk by chunk, "
        "never for the whole sequence); None: all at once.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept under the run's storage path.")
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="Also checkpoint every K optimiser steps (a crash mid-epoch loses < K steps)."
    )
    max_failures: int = Field(1, ge=0, description="Worker-group restarts (from the last checkpoint) before failing.")
    seed: int = 0

    @model_validator(mode="after")
    def _micro_batches(self) -> TrainConfig:
        if self.batch_size < self.num_workers * self.grad_accum_steps:
            raise ValueError(
                f"batch_size {self.batch_size} < num_workers x grad_accum_steps "
                f"({self.num_workers} x {self.grad_accum_steps}): some micro-batch would be empty"
            )
        return self

    @model_validator(mode="after")
    def _memory_knobs(self) -> TrainConfig:
        if self.param_dtype == "bf16" and self.precision != "bf16":
            raise ValueError("param_dtype bf16 needs precision bf16 (layers compute in their parameters' dtype)")
        for knob, on in (("cpu_offload", self.cpu_offload), ("shard_size", self.shard_size is not None)):
            if on and self.strategy != "fsdp":
                raise ValueError(f"{knob} needs strategy fsdp (DDP keeps a full replica on every worker)")
        if self.shard_size is not None and self.num_workers % self.shard_size:
            raise ValueError(f"num_workers {self.num_workers} is not a multiple of shard_size {self.shard_size}")
        reserved = sorted({"CPU", "GPU"} & set(self.custom_resources))
        if reserved:
            raise ValueError(f"custom_resources {reserved}: set cpus_per_worker / use_gpu instead")
        if any(v <= 0 for v in self.custom_resources.values()):
            raise ValueError(f"custom_resources {self.custom_resources}: each amount must be > 0")
        return self


class ReplayConfig(_Strict):
    """Rows the student already knew, mixed into every distillation's training rows (the job's student, Tune
    trials, ablation arms; not the smoke test), so that it does not overwrite what it knew outside the distilled
    domain. The curated corpus is kept whole and written as it is; the replayed rows are added to training only."""

    fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="Share of the training rows that are replayed: a corpus of N rows trains "
        "on N + round(N x fraction / (1 - fraction)). 0: no replay.")
    source: str | None = Field(
        None, description="Chat rows to replay: a corpus file as 'ray-distill train' reads it (Parquet or JSONL with "
        "'messages', any fsspec URL), e.g. general instruction data. Default: a synthetic student's own "
        "pretraining facts (the first rows of its base corpus); a real student needs a source.")
    seed: int = Field(0, description="Which rows of 'source' are replayed (a seeded shuffle).")


SUITE_PRESETS = ("aime", "math500", "gpqa", "code")


class SuiteConfig(_FileSource):
    name: str
    domain: Literal["in_domain", "ood"] = "in_domain"
    path: str | None = Field(
        None, description="Question file (any fsspec URL, e.g. hf://datasets/<org>/<name>/<file>).")
    synthetic: SyntheticQuestions | None = None
    preset: Literal["aime", "math500", "gpqa", "code"] | None = Field(
        None, description="A benchmark's file layout, prompt and answer format (see ray_distill.data.benchmarks): "
        "aime (integer answer), math500 (\\boxed{} answer), gpqa (multiple choice, graded by letter), code "
        "(tests; date_from/date_to window). 'fields' and 'prompt' override its defaults.")
    prompt: PromptTemplate = Field(None, description=PROMPT_DESCRIPTION + " Default: the preset's.")
    k: int | None = Field(None, ge=1, description="Samples per question (avg@k) of this suite; default eval.k.")
    temperature: float | None = Field(None, ge=0.0, description="Sampling temperature; default eval.temperature.")
    max_tokens: int | None = Field(None, ge=1, description="Completion tokens per sample; default eval.max_tokens.")
    pass_k: list[int] = Field(
        default_factory=list, description="Also report unbiased pass@k for these k (each at most the suite's k).")
    finished_only: bool | None = Field(
        None, description="Only a finished answer counts: a sample whose think block was opened and never closed "
        "(cut off by max_tokens mid-reasoning, or a template that opens it) scores wrong whatever it wrote. False "
        "grades the whole text (a non-reasoning student that writes the tags loosely). Default: format.require_think "
        "(the same rule as curation and the student's pass rates).")
    date_from: dt.date | None = Field(None, description="Keep questions dated on or after this day (fields.date).")
    date_to: dt.date | None = Field(None, description="Keep questions dated on or before this day (fields.date).")

    _prompt = field_validator("prompt")(check_prompt_template)

    @model_validator(mode="after")
    def _one_source(self) -> SuiteConfig:
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("set exactly one of 'path' or 'synthetic'")
        self._check_file_options()
        if self.preset is not None and self.synthetic is not None:
            raise ValueError("a preset reads a benchmark file ('path'), not synthetic questions")
        windowed = self.date_from is not None or self.date_to is not None
        if windowed and self.preset != "code" and "date" not in self.fields:
            raise ValueError("date_from/date_to need a date column: preset code, or fields.date")
        if self.date_from is not None and self.date_to is not None and self.date_from > self.date_to:
            raise ValueError(f"date_from {self.date_from} is after date_to {self.date_to}")
        if self.k is not None and any(p > self.k for p in self.pass_k):
            raise ValueError(f"pass_k {self.pass_k}: each must be at most the suite's k={self.k}")
        return self


class HarnessConfig(_Strict):
    """lm-evaluation-harness tasks run on the exported student (out-of-domain evaluation; evaluation.harness)."""

    tasks: list[str] = Field(min_length=1, description="lm_eval task (or group) names.")
    include_path: str | None = Field(
        None, description="Local folder of custom task YAMLs; the harness runs inside it, so a task's relative "
        "data_files are read from there (on a multi-node cluster: a path every node sees).")
    backend: Literal["vllm", "hf"] = Field(
        "vllm", description="lm_eval's vLLM backend (the student's serving settings) or its transformers one.")
    limit: int | None = Field(None, ge=1, description="At most this many documents per task (None: all).")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples (None: each task's default).")
    apply_chat_template: bool = Field(True, description="Prompt through the student's chat template.")
    batch_size: int | None = Field(None, ge=1, description="lm_eval batch size (None: the backend's default).")
    model_args: dict[str, Any] = Field(default_factory=dict, description="Extra lm_eval model_args (override ours).")
    seed: int = Field(0, description="lm_eval's random, numpy, torch and few-shot seeds.")


class EvalConfig(_Strict):
    k: int = Field(4, ge=1, description="Samples per question for avg@k (a suite's own k overrides it).")
    temperature: float = Field(
        0.6, ge=0.0, description="Sampling temperature (a suite's own overrides it); avg@k with k > 1 needs one > 0.")
    max_tokens: int = Field(128, ge=1)
    suites: list[SuiteConfig] = Field(default_factory=list)
    harness: HarnessConfig | None = Field(
        None, description="Optional lm-evaluation-harness run on the exported student (scores in the same MLflow "
        "run and summary table).")

    @model_validator(mode="after")
    def _pass_k_within_k(self) -> EvalConfig:
        for i, suite in enumerate(self.suites):
            k = suite.k or self.k
            if any(p > k for p in suite.pass_k):
                raise ValueError(f"suites.{i}.pass_k {suite.pass_k}: each must be at most the suite's k={k}")
            s = self.sampling(suite)
            check_not_greedy_repeats(s["k"], s["temperature"], f"suites.{i} ({suite.name}) avg@k")
        return self

    def sampling(self, suite: SuiteConfig) -> dict[str, Any]:
        """``{k, temperature, max_tokens}`` of ``suite``: its own settings, else this section's."""
        return {"k": suite.k or self.k,
                "temperature": self.temperature if suite.temperature is None else suite.temperature,
                "max_tokens": suite.max_tokens or self.max_tokens}


class DevConfig(_Strict):
    """The dev suite: what every selection step scores on (the smoke test's ranking, the Tune objective,
    the ablation's teacher choice). Held out of training like the eval suites and disjoint from them:
    the eval suites are reported, never selected on."""

    suite: SuiteConfig | None = Field(
        None, description="Dev questions (a file on any fsspec URL or a synthetic family); must not be an eval "
        "suite. None: carve num_questions out of the question pool.")
    num_questions: int = Field(
        200, ge=1, description="Questions carved out of the (decontaminated) question pool when no suite is given; "
        "they leave the training pool and their ids are logged to MLflow (dev_questions.json).")
    seed: int = Field(0, description="Seed of the carve: the questions are chosen by a seeded hash of their ids.")

    @property
    def name(self) -> str:
        """The dev suite's name: the configured suite's, or ``dev`` for a carved one."""
        return self.suite.name if self.suite is not None else "dev"


class TuneConfig(_Strict):
    num_samples: int = Field(3, ge=1, description="Trials.")
    max_concurrent_trials: int = Field(1, ge=1)
    metric: str = Field("score", description="Trial metric that Tune, ASHA and the best-trial choice rank by "
                        "(score: avg@k on the dev suite; any number a trial reports, see tuning.trial.METRICS).")
    mode: Literal["max", "min"] = Field("max", description="Whether tune.metric is maximised or minimised.")
    search_space: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Dotted config key -> list of choices, e.g. {'selection.keep_per_question': [1, 2, 4]}; "
        "'teacher' chooses a job teacher by name (without it every trial distils from the first teacher and "
        "best_job.yaml pins it; a mix 'a+b' is refused: a job distils from one teacher). Keys no trial can vary "
        "(teachers.*, compression.order, student.*, ...: ray_distill.tuning.space.FIXED) are refused.",
    )
    search: Literal["grid", "optuna"] = Field("grid", description="grid: every combination; optuna: TPE sampling.")
    points_to_evaluate: list[dict[str, Any]] = Field(
        default_factory=list, description="Optuna only: configurations (search-space keys) tried first."
    )
    scheduler: Literal["none", "asha"] = Field(
        "none", description="asha: trials train in rungs of epochs and the worse ones stop early; none: train.epochs."
    )
    grace_period: int = Field(1, ge=1, description="ASHA: epochs every trial trains before it can be stopped.")
    reduction_factor: int = Field(2, ge=2, description="ASHA: rungs at grace_period * reduction_factor^i epochs.")
    top_up: bool = Field(
        False, description="Generate teacher samples the store lacks (spends teacher tokens); "
        "false: each question uses at most the samples the store holds."
    )
    trial_resources: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1.0},
        description="Resources of each trial's own process (its Train workers and vLLM actors ask for theirs).",
    )
    max_failures: int = Field(0, ge=0, description="Retries of a failing trial; a trial that still fails is recorded.")

    @field_validator("trial_resources")
    @classmethod
    def _a_trial_asks_for_something(cls, value: dict[str, float]) -> dict[str, float]:
        if any(v < 0 for v in value.values()) or not any(v > 0 for v in value.values()):
            raise ValueError(f"{value}: each trial must ask for a positive amount of some resource and none below 0 "
                             "(e.g. {CPU: 0.5}; Ray Tune cannot place a trial that asks for nothing)")
        return value

    @model_validator(mode="after")
    def _points_need_optuna(self) -> TuneConfig:
        if self.points_to_evaluate and self.search != "optuna":
            raise ValueError("points_to_evaluate needs search: optuna")
        for point in self.points_to_evaluate:
            for key, value in point.items():
                if key not in self.search_space or value not in self.search_space[key]:
                    raise ValueError(f"points_to_evaluate: {key}={value!r} is not a choice of search_space")
        return self


def check_curve_multiples(multiples: list[int], epochs: int) -> None:
    """The k x N curve arm trains ``epochs / k`` epochs: a k that does not divide ``epochs`` would give it
    other optimizer steps than DED at N, so it is an error (pure; also used by ``ablation.curve_budgets``)."""
    bad = [k for k in multiples if epochs % k]
    if bad:
        raise ValueError(f"ablation.curve.multiples {bad} do not divide train.epochs={epochs}: the curve arms "
                         "would not take the same optimizer steps; pick train.epochs divisible by every multiple")


class JobConfig(_Strict):
    name: str = Field("ray-distill", description="Job name; outputs land under <storage>/<name>.")
    storage: str = Field(
        "outputs", description="Root of all outputs (any fsspec URL). A relative path is resolved against "
        "$RAY_DISTILL_STORAGE when set, else the working directory (refused under Ray's Jobs API).")
    seed: int = 0
    cluster: str | None = Field(
        None, description="The cluster config this job is sized for (cluster/aws.yaml or a KubeRay manifest; a relative "
        "path is looked up from the working directory, then beside the job file and its parent folder): "
        "`ray-distill plan` and `run` check each stage's GPU memory against its node types.")
    base_dir: str | None = Field(
        None, description="Directory the job file's relative input paths (question, suite, replay, harness and chat "
        "template files) resolve against; default: the job file's directory, a relative base_dir is relative to it. "
        "A path found only from the working directory is read from there; storage stays relative to the working "
        "directory (see ray_distill.job_paths). Set by load_config to the directory used.")
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()
    questions: QuestionsConfig
    teachers: list[TeacherConfig] = Field(min_length=1)
    student: StudentConfig = StudentConfig()
    format: FormatConfig = FormatConfig()
    verify: VerifyConfig = VerifyConfig()
    smoke_test: SmokeTestConfig = SmokeTestConfig()
    dev: DevConfig = Field(DevConfig(), description="The dev suite every selection step scores on.")
    compression: CompressionConfig = CompressionConfig()
    selection: SelectionConfig = SelectionConfig()
    train: TrainConfig = TrainConfig()
    replay: ReplayConfig = Field(ReplayConfig(), description="Base-knowledge replay mixed into distillation.")
    eval: EvalConfig = EvalConfig()
    tune: TuneConfig = TuneConfig()
    budget: BudgetConfig = BudgetConfig()
    ablation: AblationConfig = AblationConfig()

    # Where ``storage`` came from (ray_distill.environment.SOURCE_*); set by config_from_dict.
    _storage_source: str = PrivateAttr("as configured")

    @field_validator("storage")
    @classmethod
    def _absolute_storage(cls, v: str) -> str:
        """A local storage path is made absolute here (Ray workers do not share the driver's cwd), never
        inside Ray's copy of a job's working directory: see ray_distill.environment.resolve_storage."""
        from ray_distill.environment import resolve_storage

        return resolve_storage(v, os.environ, os.getcwd())[0]

    @model_validator(mode="after")
    def _unique_teachers(self) -> JobConfig:
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        return self

    @model_validator(mode="after")
    def _replay_has_a_source(self) -> JobConfig:
        from ray_distill.presets import is_preset

        synthetic = self.student.model is None and not is_preset(self.student.preset)
        if self.replay.fraction > 0 and self.replay.source is None and not synthetic:
            raise ValueError("replay.fraction > 0 needs replay.source (a chat corpus file to replay) for a pretrained "
                             "student: only a synthetic student's pretraining rows are known")
        return self

    @model_validator(mode="after")
    def _judge_is_not_a_teacher(self) -> JobConfig:
        if self.verify.judge.mode != "off" and self.verify.judge.name in {t.name for t in self.teachers}:
            raise ValueError(f"verify.judge.name: {self.verify.judge.name!r} is a teacher's name (they share the "
                             "generation store); name the judge apart")
        return self

    @model_validator(mode="after")
    def _dev_is_not_an_eval_suite(self) -> JobConfig:
        for i, suite in enumerate(self.eval.suites):
            clash = _same_questions(self.dev, suite)
            if clash:
                raise ValueError(f"{clash} as eval.suites.{i} ({suite.name!r}): selection must not score on a "
                                 "reported eval suite; give the dev suite questions of its own")
        return self

    @model_validator(mode="after")
    def _dev_pass_k_within_k(self) -> JobConfig:
        suite = self.dev.suite
        if suite is not None and any(p > (suite.k or self.eval.k) for p in suite.pass_k):
            raise ValueError(f"dev.suite.pass_k {suite.pass_k}: each must be at most the suite's k={suite.k or self.eval.k}")
        if suite is not None:
            s = self.eval.sampling(suite)
            check_not_greedy_repeats(s["k"], s["temperature"], f"dev.suite ({suite.name}) avg@k")
        return self

    @model_validator(mode="after")
    def _curve_arms_take_equal_steps(self) -> JobConfig:
        if self.ablation.curve is not None:
            check_curve_multiples(self.ablation.curve.multiples, self.train.epochs)
        return self

    @model_validator(mode="after")
    def _completions_fit_max_seq_len(self) -> JobConfig:
        """Every candidate's rows may be trained on (any may win the smoke test): its longest kept completion,
        min(sampling.max_tokens, format.max_tokens), must fit train.max_seq_len, or training would cut final
        answers off. Prompts are not counted (the longest question is not known from the config). Scripted
        teachers (the synthetic world's writers) are exempt: their completions have fixed, short lengths."""
        for t in self.teachers:
            cap = min(t.sampling.max_tokens, self.format.max_tokens)
            if t.engine.kind != "scripted" and self.train.max_seq_len < cap:
                raise ValueError(f"train.max_seq_len {self.train.max_seq_len} < teacher {t.name!r} sampling.max_tokens "
                                 f"{t.sampling.max_tokens} (format.max_tokens {self.format.max_tokens}): its longest "
                                 f"completions would lose their final answer; set train.max_seq_len to at least {cap} "
                                 "plus the longest prompt, or lower the max_tokens")
        return self

    @property
    def storage_source(self) -> str:
        """``as configured`` (an URL or absolute path), ``relative to RAY_DISTILL_STORAGE`` or ``relative to
        the working directory``."""
        return self._storage_source

    @property
    def run_dir(self) -> str:
        """Where this job's outputs land: ``<storage>/<name>``."""
        return f"{self.storage.rstrip('/')}/{self.name}"


def _same_questions(dev: DevConfig, suite: SuiteConfig) -> str | None:
    """Why ``dev`` would score on the questions of eval ``suite`` (``"dev.suite.path: same file"``), or None."""
    if dev.name == suite.name:
        return f"{'dev.suite.name' if dev.suite else 'dev (carved)'}: same name {suite.name!r}"
    if dev.suite is None:
        return None
    if dev.suite.path is not None and suite.path is not None and _norm_path(dev.suite.path) == _norm_path(suite.path):
        return "dev.suite.path: same file"
    a, b = dev.suite.synthetic, suite.synthetic
    if a is not None and b is not None and (a.family, a.seed) == (b.family, b.seed):
        return "dev.suite.synthetic: same family and seed (the same question draws)"
    return None


def _norm_path(path: str) -> str:
    path = path.removeprefix("file://")
    return path.rstrip("/") if "://" in path else os.path.normpath(os.path.abspath(path))


# Keys that were removed, and what to use instead: a job that still sets one fails with this advice.
REMOVED_KEYS = {
    "smoke_test.suite": "dev.suite (one dev suite scores the smoke test and the Tune objective; eval suites are "
                        "only reported)",
}


def removed_key(tree: dict) -> str | None:
    """``"<key>: removed; use <replacement>"`` for the first removed key that ``tree`` sets, or None."""
    for dotted, instead in REMOVED_KEYS.items():
        node: Any = tree
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return f"{dotted}: removed; use {instead}"
    return None


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
    from ray_distill.job_paths import resolve_inputs

    for text_override in overrides or []:
        keys, value = parse_override(text_override)
        apply_override(tree, keys, value)
    tree = resolve_inputs(tree, path, os.getcwd())  # input files from the job's base_dir (see job_paths)
    return config_from_dict(tree, source=path)


def config_from_dict(tree: dict, source: str = "<config>") -> JobConfig:
    """Validate a config tree; a relative ``storage`` is resolved here, against ``$RAY_DISTILL_STORAGE`` or the
    working directory (see ray_distill.environment.resolve_storage), and its source kept on the config."""
    removed = removed_key(tree)
    if removed:
        raise ConfigError(f"{source}: {removed}")
    from ray_distill.environment import SOURCE_CONFIG, resolve_storage

    storage_source = SOURCE_CONFIG
    if isinstance(tree.get("storage", "outputs"), str):
        try:
            storage, storage_source = resolve_storage(tree.get("storage", "outputs"), os.environ, os.getcwd())
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        tree = {**tree, "storage": storage}
    try:
        cfg = JobConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{source}: {format_validation_error(err)}") from None
    cfg._storage_source = storage_source
    return cfg


def format_validation_error(err: ValidationError) -> str:
    """One line per problem, joined by '; ': ``train.epochs: Input should be a valid integer (got 'x')``."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "value_error":  # a validator's own message, without pydantic's "Value error, " prefix
            msg = str(e["ctx"]["error"])
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and not isinstance(e["input"], (dict, list)) and repr(e["input"]) not in msg:
            msg = f"{msg} (got {e['input']!r})"
        parts.append(f"{loc}: {msg}" if loc else msg)  # a job-level check names its keys itself
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
