"""A batch job from its parameters to the final file.

::

    JobSpec ─► prepare() ─────────────────────────────► PreparedJob
               model (verified), methods, options,         plan: schema + options for every chunk
               input columns, a trial explanation          identity: what a resume must match
                        │
    run_job() ─► PartsDir.open (new, or resume) ─► read_chunks ─► engine.run ─► PartsDir.commit (per chunk)
                                                   (skips committed chunks)          │
                                                        combine parts in input order ◄┘
                                                        ─► OUT.rejected.jsonl, OUT.parquet (atomic), parts removed

Errors: :class:`JobRefused` for parameters or inputs that cannot work (nothing
is written; the command exits 2), :class:`JobFailed` for failures while
running (committed chunks are kept, so ``--resume`` goes on from there).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

import explain_service
from explain_service.batch.audit import (
    AuditRefused,
    ModelStopped,
    append_once,
    audit_ref,
    open_audit_store,
    refuse_if_suspended,
)
from explain_service.batch.compute import PARQUET_OPTIONS, ChunkPlan, RawChunk, _explained_columns
from explain_service.batch.engines import (
    DaskEngine,
    InProcessEngine,
    ModelBundle,
    ProcessEngine,
    available_cores,
)
from explain_service.batch.io import FORMATS, InputError, InputInfo, fingerprint, inspect_input, read_chunks
from explain_service.batch.layout import clashing_columns, feature_field, output_schema
from explain_service.batch.manifest import (
    ChunkRecord,
    JobManifest,
    JobStateError,
    PartsDir,
    part_name,
    rejected_name,
)
from explain_service.batch.progress import Progress, Summary
from explain_service.errors import ServiceError, ValidationFailed
from explain_service.explainers import EXPLAINERS
from explain_service.registry.model import LoadedModel
from explain_service.registry.store import ModelRegistry
from explain_service.service import METHOD_ORDER, ExplainService
from explain_service.versions import library_versions

OUTPUT_FORMAT = 1
DEFAULT_CHUNK_SIZE = 10_000


class JobRefused(Exception):
    """The job cannot run with these parameters or this input."""


class JobFailed(Exception):
    """The job failed while running; committed chunks are kept for ``--resume``."""


@dataclass(frozen=True)
class JobSpec:
    """The parameters of a batch job."""

    model: str
    input: Path
    output: Path
    models_dir: Path = Path("models")
    version: str | None = None
    methods: tuple[str, ...] = ("shap",)
    target: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    chunk_size: int = DEFAULT_CHUNK_SIZE
    resume: bool = False
    engine: str = "local"
    workers: int | None = None
    scheduler: str | None = None
    audit_url: str | None = None
    id_columns: tuple[str, ...] = ()
    route_reviews: bool = False


@dataclass
class PreparedJob:
    """A job whose parameters, model and input have all been checked."""

    spec: JobSpec
    model: LoadedModel
    version_dir: Path
    info: InputInfo
    plan: ChunkPlan
    identity: dict[str, Any]

    @property
    def rejected_path(self) -> Path:
        return rejected_path(self.spec.output)


def rejected_path(output: Path) -> Path:
    """``OUT.parquet`` -> ``OUT.rejected.jsonl``."""
    stem = output.name[: -len(".parquet")] if output.name.endswith(".parquet") else output.name
    return output.with_name(stem + ".rejected.jsonl")


def _plain_json(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY))


def _library_versions() -> dict[str, str]:
    return {
        "explain-service": explain_service.__version__,
        **library_versions(("xgboost", "scikit-learn", "shap", "numpy", "pandas", "pyarrow"), python=False),
    }


PER_ROW_TARGET = "predicted"


def job_target(model: LoadedModel, requested: str | None) -> str | None:
    """The one class every row of a job is explained for (None: each row's predicted class).

    ``requested`` wins (``"predicted"`` asks for each row's predicted class, unless a class has that
    name); by default the favourable class when the model declares one, else the second (positive)
    class of a binary model, else, for multiclass models, each row's predicted class. One class for
    the whole job keeps ``shap.base_value`` and every ``shap.<feature>`` on one scale, so column
    means and dependence plots mean something.
    """
    if not model.is_classifier:
        return requested
    if requested is not None:
        return None if requested == PER_ROW_TARGET and requested not in model.class_names else requested
    if model.favorable is not None:
        return model.favorable
    if len(model.class_names) == 2:
        return model.class_names[1]
    return None


def prepare(spec: JobSpec) -> PreparedJob:
    """Check everything that can be checked before any row is read; raises :class:`JobRefused`."""
    _check_paths(spec)
    methods = _methods(spec)
    model, options = _model_and_options(spec, methods)
    target = job_target(model, spec.target)
    info = _input_info(spec, model)
    id_columns = _id_columns(spec, model, info)
    try:
        audit = audit_ref(spec.audit_url)
    except AuditRefused as exc:
        raise JobRefused(str(exc)) from None
    try:
        input_print = fingerprint(spec.input)
    except InputError as exc:
        raise JobRefused(str(exc)) from None
    options_json = _plain_json(options)
    model_ref = {"name": model.name, "version": model.version, "sha256": model.sha256}
    metadata_doc = {
        "format": OUTPUT_FORMAT,
        "model": model_ref,
        "methods": methods,
        "target": target if target is not None or not model.is_classifier else PER_ROW_TARGET,
        "options": options_json,
        "libraries": _library_versions(),
        "id_columns": list(id_columns),
    }
    identity = {
        "input": {"path": str(spec.input.resolve()), "format": info.format, **input_print},
        "model": model_ref,
        "methods": methods,
        "target": metadata_doc["target"],
        "options": options_json,
        "chunk_size": spec.chunk_size,
        "output_format": OUTPUT_FORMAT,
        "libraries": metadata_doc["libraries"],
        "audit": audit,
        "id_columns": list(id_columns),
    }
    if spec.route_reviews:  # only then, so that the jobs of earlier versions still resume
        identity["route_reviews"] = True
    plan = ChunkPlan(
        model_sha256=model.sha256,
        methods=tuple(methods),
        target=target,
        counterfactual_target=target if spec.target is not None else None,
        options=options,
        input_columns=info.columns,
        schema=output_schema(
            model, _input_fields(model, info), methods, metadata_doc, audit=spec.audit_url is not None
        ),
        raw_options=spec.options,
        audit_job=_job_id(identity) if spec.audit_url else None,
        id_columns=id_columns,
        route_reviews=spec.route_reviews,
    )
    _trial(model, plan)
    version_dir = spec.models_dir / model.name / model.version
    return PreparedJob(spec, model, version_dir, info, plan, identity)


def _check_paths(spec: JobSpec) -> None:
    """Chunk size, file names, a readable input and a writable place for the output."""
    if spec.chunk_size < 1:
        raise JobRefused(f"chunk size must be a positive number of rows, not {spec.chunk_size}")
    if not spec.output.name.endswith(".parquet"):
        raise JobRefused(f"the output must be a .parquet file, not {spec.output.name!r}")
    if spec.input.suffix.lower() not in FORMATS:
        raise JobRefused(f"unsupported input extension {spec.input.suffix!r}: use .csv or .parquet")
    if not spec.input.is_file():
        raise JobRefused(f"input file {spec.input} does not exist")
    if not os.access(spec.input, os.R_OK):
        raise JobRefused(f"cannot read the input {spec.input}: permission denied")
    if spec.output.resolve() == spec.input.resolve():
        raise JobRefused("the output must not be the input file")
    _check_writable(spec.output.parent)


def _check_writable(directory: Path) -> None:
    """Refuse an output directory that cannot be created or written, naming it."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise JobRefused(f"cannot write the output to {directory}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise JobRefused(f"cannot write the output to {directory}: permission denied on {existing}")


def _methods(spec: JobSpec) -> list[str]:
    """The requested methods in the service's order; refuses unknown or repeated ones."""
    methods = list(spec.methods)
    unknown = [m for m in methods if m not in EXPLAINERS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise JobRefused(
            f"unknown or repeated method(s) {', '.join(unknown) or ', '.join(methods)}; "
            f"available: {', '.join(m for m in METHOD_ORDER if m in EXPLAINERS)}"
        )
    return [m for m in METHOD_ORDER if m in methods] + [m for m in methods if m not in METHOD_ORDER]


def _model_and_options(spec: JobSpec, methods: list[str]) -> tuple[LoadedModel, dict[str, Any]]:
    """The verified model, and the methods' options loaded as the API loads them."""
    registry = ModelRegistry(spec.models_dir)
    try:
        model = registry.get(spec.model, spec.version)
    except ServiceError as exc:
        raise JobRefused(f"{exc.message} (models dir {spec.models_dir})") from None
    for method in methods:
        if not EXPLAINERS[method].supports(model):
            raise JobRefused(f"method {method!r} cannot explain model {model.name}@{model.version}")
    service = ExplainService(explainers=dict(EXPLAINERS))
    try:
        options = service.load_options(methods, spec.options)
        service.resolve_target(model, job_target(model, spec.target))
    except ValidationFailed as exc:
        raise JobRefused(_errors_text(exc.errors)) from None
    return model, options


def _input_info(spec: JobSpec, model: LoadedModel) -> InputInfo:
    """The input's columns, checked against the model's features and the output's own columns."""
    try:
        info = inspect_input(spec.input, model.schema)
    except InputError as exc:
        raise JobRefused(str(exc)) from None
    missing = [n for n in model.schema.names if n not in info.columns]
    if missing:
        raise JobRefused(
            f"input {spec.input} lacks feature column(s) {', '.join(missing)} of {model.name}@{model.version}"
        )
    clashes = clashing_columns(list(info.columns), audit=spec.audit_url is not None)
    if clashes:
        raise JobRefused(
            f"input column(s) {', '.join(clashes)} would be overwritten by output columns; rename them"
        )
    return info


def _id_columns(spec: JobSpec, model: LoadedModel, info: InputInfo) -> tuple[str, ...]:
    """``--id-columns``, checked: input columns that are not features of the model, each named once.

    An id is carried, never modelled: a model feature cannot be an id column (a copy of it under
    another name can), so what the model sees never depends on what the caller marks as an id.
    """
    names = spec.id_columns
    if any(not n for n in names):
        raise JobRefused("--id-columns holds an empty column name")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise JobRefused(f"id column(s) {', '.join(repeated)} named more than once in --id-columns")
    absent = [n for n in names if n not in info.columns]
    if absent:
        raise JobRefused(f"id column(s) {', '.join(absent)} not in the input {spec.input}")
    features = [n for n in names if n in model.schema.names]
    if features:
        raise JobRefused(
            f"id column(s) {', '.join(features)} are features of {model.name}@{model.version}; ids are "
            "never fed to the model: copy the column under another name and pass that name as the id"
        )
    return tuple(names)


def _input_fields(model: LoadedModel, info: InputInfo) -> list[pa.Field]:
    """Output fields of the input columns: features typed by the schema, the rest as read."""
    passthrough = {f.name: f for f in info.passthrough}
    return [
        feature_field(model.schema[c]) if c in model.schema.names else passthrough[c] for c in info.columns
    ]


def _job_id(identity: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]


def _errors_text(errors: dict[str, list[str]]) -> str:
    return "; ".join(f"{k}: {' '.join(v)}" for k, v in sorted(errors.items()))


def _trial(model: LoadedModel, plan: ChunkPlan) -> None:
    """Explain two background rows, so option problems surface before any work."""
    rows = model.background.iloc[:2]
    try:
        _explained_columns(model, {n: rows[n].to_numpy() for n in model.schema.names}, plan)
    except ValidationFailed as exc:  # an OptionError: an option this model cannot honour
        raise JobRefused(_errors_text(exc.errors)) from None


def make_engine(job: PreparedJob) -> InProcessEngine | ProcessEngine | DaskEngine:
    """The engine the spec asks for, sized to the machine.

    Local, without ``--workers``: the job's own process computes one chunk per core at once,
    one native thread each (measured fastest; see bench/RESULTS.md, "Batch"). ``--workers 1``:
    one chunk at a time on every core. ``--workers N``: N worker processes, cores // N threads each.
    """
    spec, cores = job.spec, available_cores()
    if spec.engine == "dask":
        bundle = ModelBundle.from_dir(job.version_dir, job.model.sha256)
        return DaskEngine(bundle, job.plan, workers=spec.workers or cores, scheduler=spec.scheduler)
    if spec.engine != "local":
        raise JobRefused(f"unknown engine {spec.engine!r}: use local or dask")
    if spec.workers is None:
        return InProcessEngine(job.model, job.plan, concurrent=cores, threads=1)
    if spec.workers == 1:
        return InProcessEngine(job.model, job.plan, concurrent=1, threads=cores)
    bundle = ModelBundle.from_dir(job.version_dir, job.model.sha256)
    return ProcessEngine(bundle, job.plan, spec.workers, max(1, cores // spec.workers))


def run_job(spec: JobSpec, progress: Progress | None = None) -> Summary:
    """Run (or resume) a job to its final file; see the module docstring."""
    job = prepare(spec)
    progress = progress or Progress()
    try:
        store = open_audit_store(spec.audit_url) if spec.audit_url else None
    except AuditRefused as exc:
        raise JobRefused(str(exc)) from None
    suspensions = _suspensions(store)
    parts = PartsDir(spec.output)
    try:
        if suspensions is not None:
            _obey(suspensions, job, "this job cannot run until it is resumed", JobRefused)
        manifest = _open_parts(parts, job)
        if parts.audit_key is not None:
            job.plan = dataclasses.replace(job.plan, audit_key=parts.audit_key)
        resumed = dict(manifest.chunks)
        t0 = time.monotonic()
        progress.start(
            job.info.total_rows, exact=job.info.exact_total, done=sum(r.rows for r in resumed.values())
        )
        if manifest.total_chunks is None or len(manifest.chunks) < manifest.total_chunks:
            engine_name = _compute(job, parts, resumed, store, suspensions, progress)
        else:
            engine_name = "nothing left to compute"
        try:
            summary = _finish(job, parts, t0, resumed, engine_name)
        except OSError as exc:
            raise JobFailed(f"cannot write the output {spec.output}: {exc.strerror or exc}") from exc
    finally:
        progress.close()
        parts.close()
        if suspensions is not None:
            suspensions.close()
        if store is not None:
            store.close()
    progress.finish(summary)
    return summary


def _suspensions(store: Any) -> Any:
    """The stop button of the job's audit store (None without ``--audit``)."""
    if store is None:
        return None
    from explain_service.audit.suspensions import Suspensions

    return Suspensions(store)


def _obey(suspensions: Any, job: PreparedJob, when: str, refusal: type[JobRefused | JobFailed]) -> None:
    """``refusal`` if the job's model is suspended; a store that cannot tell stops the job too."""
    from explain_service.audit import AuditError

    try:
        refuse_if_suspended(suspensions, job.model.name, job.model.version, when)
    except (ModelStopped, AuditError) as exc:
        raise refusal(str(exc)) from None


def _open_parts(parts: PartsDir, job: PreparedJob) -> JobManifest:
    """Create (or take up) the parts directory; refusals and unwritable places are one line."""
    try:
        job.spec.output.parent.mkdir(parents=True, exist_ok=True)
        return parts.open(job.identity, resume=job.spec.resume, audit=job.spec.audit_url is not None)
    except JobStateError as exc:
        raise JobRefused(str(exc)) from None
    except OSError as exc:
        where = exc.filename or parts.path
        raise JobRefused(f"cannot write the output to {where}: {exc.strerror or exc}") from None


def _compute(
    job: PreparedJob,
    parts: PartsDir,
    resumed: dict[int, ChunkRecord],
    store: Any,
    suspensions: Any,
    progress: Progress,
) -> str:
    """Compute and commit every chunk not committed yet; returns the engine's description."""
    engine = make_engine(job)
    seen = _Counter()
    todo = _pending_chunks(job, resumed, seen)
    try:
        with engine:
            for result in engine.run(todo):
                if store is not None:
                    stopped = "the job stopped; resume the model, then run it again with --resume"
                    _obey(suspensions, job, stopped, JobFailed)
                    append_once(store, result.audit)
                record = ChunkRecord(
                    rows=result.rows,
                    written=result.written,
                    rejected=result.rejected,
                    part_sha256=result.part_sha256,
                    rejected_sha256=result.rejected_sha256,
                )
                parts.commit(result.index, record, result.part, result.rejected_lines)
                progress.advance(result.rows)
    except (JobRefused, JobFailed):
        raise
    except Exception as exc:
        raise JobFailed(f"{type(exc).__name__}: {exc}") from exc
    parts.set_total(seen.count)
    return engine.description


class _Counter:
    count = 0


def _pending_chunks(job: PreparedJob, done: dict[int, ChunkRecord], seen: _Counter) -> Iterator[RawChunk]:
    """The input's chunks that are not committed yet (committed ones are read and skipped)."""
    for chunk in read_chunks(job.info, job.model.schema, job.spec.chunk_size):
        seen.count = chunk.index + 1
        record = done.get(chunk.index)
        if record is None:
            yield chunk
        elif record.rows != len(chunk):
            raise JobFailed(
                f"chunk {chunk.index} now has {len(chunk)} rows, {record.rows} before: the input changed"
            )


def _finish(
    job: PreparedJob, parts: PartsDir, t0: float, resumed: dict[int, ChunkRecord], engine: str
) -> Summary:
    """Combine the parts in input order into the final files, atomically, and remove the parts."""
    manifest = parts.manifest
    assert manifest is not None and manifest.total_chunks is not None
    indices = range(manifest.total_chunks)
    missing = [i for i in indices if i not in manifest.chunks]
    if missing:
        raise JobFailed(f"chunks {missing[:5]} were not computed; run again with --resume")
    out, rejected = job.spec.output, job.rejected_path
    tmp_rejected = parts.path / "final.rejected.jsonl.tmp"
    with open(tmp_rejected, "wb") as sink:
        for i in indices:
            digest = manifest.chunks[i].rejected_sha256
            if digest is not None:
                sink.write(_verified(parts.path / rejected_name(i), digest))
        sink.flush()
        os.fsync(sink.fileno())
    tmp_out = parts.path / "final.parquet.tmp"
    with pq.ParquetWriter(tmp_out, job.plan.schema, **PARQUET_OPTIONS) as writer:
        for i in indices:
            table = pq.read_table(
                pa.BufferReader(_verified(parts.path / part_name(i), manifest.chunks[i].part_sha256))
            )
            if table.num_rows:
                writer.write_table(table.replace_schema_metadata(job.plan.schema.metadata))
    with open(tmp_out, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp_rejected, rejected)
    os.replace(tmp_out, out)
    parts.remove()
    records = manifest.chunks.values()
    return Summary(
        rows=sum(r.rows for r in records),
        computed_rows=sum(r.rows for i, r in manifest.chunks.items() if i not in resumed),
        written=sum(r.written for r in records),
        rejected=sum(r.rejected for r in records),
        chunks=manifest.total_chunks,
        resumed_chunks=len(resumed),
        seconds=time.monotonic() - t0,
        output=str(out),
        rejected_path=str(rejected),
        engine=engine,
    )


def _verified(path: Path, sha256: str) -> bytes:
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise JobFailed(f"{path} changed since it was written; run again with --resume to recompute it")
    return data
