"""``explain-service batch``: explain a CSV or Parquet file into a Parquet file.

Running on a Dask cluster of several machines
----------------------------------------------

The same job runs on any ``dask.distributed`` cluster; chunks are the unit of
work and of resume, and only the machine that runs the command reads the input
and writes the output and its parts directory. Workers need explain-service
and its pinned dependencies installed (``pip install -r requirements.txt`` and
the package), the same versions as the driver; they do not need the model
registry or the input file: the model travels to them as its verified
registry files and each chunk as data.

1. Start a scheduler on one machine and workers on the others, one thread per
   worker process so that processes x threads does not exceed the cores::

       machine-a$ dask scheduler --host 10.0.0.1 --port 8786
       machine-b$ dask worker tcp://10.0.0.1:8786 --nworkers auto --nthreads 1
       machine-c$ dask worker tcp://10.0.0.1:8786 --nworkers auto --nthreads 1

2. Point the job at the scheduler::

       explain-service batch --model german-credit@1 --input applicants.parquet \\
           --output explained.parquet --engine dask --scheduler tcp://10.0.0.1:8786

3. If the driver or the cluster goes down, run the same command again with
   ``--resume``: committed chunks are kept and the rest is computed.

Keep the scheduler port on a private network: a Dask cluster runs whatever
tasks its clients send. Without ``--scheduler``, ``--engine dask`` starts a
``LocalCluster`` on 127.0.0.1 with ``--workers`` processes of one thread each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from explain_service.config import Settings
from explain_service.model_ref import parse_model_ref

HELP = """Explain every row of a CSV or Parquet file into a Parquet file.

\b
MODEL is NAME or NAME@VERSION (default: the newest version).
Output columns, in this order:
  the input columns       features typed by the model's schema; other
                          columns passed through (as text from CSV, with
                          their types from Parquet), e.g. ids
  audit_id                each row's audit record id (--audit)
  prediction              class label (classifiers) or value (regressors)
  proba.<class>           class probabilities (classifiers)
  shap.target, shap.output, shap.base_value, shap.<feature> (one per input
  feature, one-hot columns summed back), shap.additivity_residual
  shap.target is one class for the whole job (--target; by default the
  favourable class, else a binary model's second class, else each row's
  predicted class)
  lime.target, lime.intercept, lime.score, lime.<feature> (the feature's
  contribution, comparable with shap.<feature>), lime.slope.<feature> (the
  surrogate's weight)                                      (--methods lime)
  counterfactual.json     the counterfactual answer as JSON (--methods
                          counterfactual)

\b
Rows that fail the model's input validation are left out of the output and
written to OUT.rejected.jsonl, one JSON object per line:
  {"row": <0-based input row>, "errors": {feature: [messages]}, "input": {...}}
Missing feature columns stop the job before any work.

\b
Work is committed chunk by chunk under OUT.parquet.parts/. After a crash or
kill, rerun with --resume: no row is lost or written twice, and the result
equals an uninterrupted run. The final file appears atomically and the parts
directory is removed.

\b
Engines: local (default) runs one chunk per core at once in this process;
--workers 1 runs one chunk at a time on every core, --workers N uses N worker
processes. dask runs the chunks on a LocalCluster (--workers processes) or on
the cluster at --scheduler. The output is the same on every engine.

\b
--audit stores one audit record per explained row, as the API would; the
audit_id column names it. Ids are b + 32 hex digits of HMAC-SHA256(job key,
row): unguessable from one another, reproduced by --resume (which never
stores a row twice) from the key kept in the parts directory. Running a
finished job again is a new job with new records and ids.

--id-columns COL[,COL] names input columns holding the caller's ids: they
must be in the input and must not be model features (ids are never fed to
the model); their values go into each audit record's body under
"batch": {"job", "row", "ids": {COL: value}}.
"""


@click.command("batch", help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_ref", required=True, metavar="NAME[@VERSION]", help="registered model")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="rows to explain (.csv or .parquet)",
)
@click.option(
    "--output",
    "output_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="result file (.parquet)",
)
@click.option("--methods", default="shap", show_default=True, help="comma-separated explanation methods")
@click.option(
    "--target",
    default=None,
    metavar="CLASS|predicted",
    help="class every row is explained for (default: the favourable class, else the second class of a "
    "binary model, else each row's predicted class); 'predicted': each row's predicted class",
)
@click.option(
    "--output-space",
    type=click.Choice(["log_odds", "probability", "raw"]),
    default=None,
    help="SHAP output space (default: the model's native one)",
)
@click.option(
    "--options",
    "options_json",
    default=None,
    metavar="JSON",
    help='per-method options, e.g. \'{"lime": {"num_samples": 1000}}\'',
)
@click.option("--engine", type=click.Choice(["local", "dask"]), default="local", show_default=True)
@click.option("--scheduler", default=None, metavar="ADDRESS", help="Dask scheduler, e.g. tcp://10.0.0.1:8786")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="local: 1 = one chunk at a time in this process, N = N worker processes "
    "(default: one chunk per core on threads in this process); dask: LocalCluster processes (default: cores)",
)
@click.option(
    "--chunk-size", type=click.IntRange(min=1), default=10_000, show_default=True, help="rows per chunk"
)
@click.option("--resume", is_flag=True, help="finish an interrupted job with the same parameters")
@click.option("--models-dir", default=None, help="default: $EXPLAIN_MODELS_DIR or models/")
@click.option(
    "--audit",
    is_flag=True,
    help="store an audit record per explained row (an unguessable id per row, in the audit_id column; "
    "written once even across resumes)",
)
@click.option(
    "--id-columns",
    default=None,
    metavar="COL[,COL]",
    help="input columns holding the caller's ids (not model features): checked, passed through, and "
    "written into each audit record with --audit",
)
@click.option("--database-url", default=None, help="audit store for --audit (default: $EXPLAIN_DATABASE_URL)")
@click.option(
    "--route-reviews",
    is_flag=True,
    help="with --audit, route each record by the model's review rules, as the API does: flagged rows "
    "join the reviewers' queue (off by default: a whole data set can flood it)",
)
@click.option(
    "--progress-every",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="seconds between progress lines when stderr is not a terminal",
)
def batch(
    model_ref: str,
    input_path: Path,
    output_path: Path,
    methods: str,
    target: str | None,
    output_space: str | None,
    options_json: str | None,
    engine: str,
    scheduler: str | None,
    workers: int | None,
    chunk_size: int,
    resume: bool,
    models_dir: str | None,
    audit: bool,
    id_columns: str | None,
    database_url: str | None,
    route_reviews: bool,
    progress_every: float,
) -> None:
    from explain_service.batch.job import JobFailed, JobRefused, JobSpec, run_job
    from explain_service.batch.progress import Progress

    name, version = parse_model_ref(model_ref)
    if scheduler and engine != "dask":
        raise click.BadParameter("--scheduler needs --engine dask", param_hint="--scheduler")
    options: dict = {}
    if options_json:
        try:
            options = orjson.loads(options_json)
        except orjson.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--options") from None
        if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
            raise click.BadParameter('expected {"method": {"option": value}}', param_hint="--options")
    if database_url and not audit:
        raise click.BadParameter("--database-url needs --audit", param_hint="--database-url")
    if route_reviews and not audit:
        raise click.BadParameter("--route-reviews needs --audit", param_hint="--route-reviews")
    settings = Settings.from_env(models_dir=models_dir, database_url=database_url)
    if output_space:
        options.setdefault("shap", {})["output"] = output_space
    spec = JobSpec(
        model=name,
        version=version,
        models_dir=Path(settings.models_dir),
        input=input_path,
        output=output_path,
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        target=target,
        options=options,
        chunk_size=chunk_size,
        resume=resume,
        engine=engine,
        workers=workers,
        scheduler=scheduler,
        audit_url=settings.database_url if audit else None,
        route_reviews=route_reviews,
        id_columns=tuple(c.strip() for c in id_columns.split(",")) if id_columns is not None else (),
    )
    try:
        run_job(spec, Progress(sys.stderr, interval=progress_every))
    except JobRefused as exc:
        raise click.UsageError(str(exc)) from None
    except JobFailed as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    batch(prog_name="explain-service batch")
