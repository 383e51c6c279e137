"""Batch jobs: explain a whole CSV or Parquet file into a Parquet file, resumably.

Modules, in the order data flows through them::

    csv_input.py CSV rows one by one: well-formed rows to pandas, malformed ones to the rejected rows
    io.py        chunked readers (CSV, Parquet via pyarrow), whole-file fingerprint, durable writes
    validate.py  whole-chunk validation with the API's instance rules; per-row messages for rejects
    layout.py    the output columns of each method (the file layout below)
    compute.py   one chunk -> one encoded part + its rejected rows (runs wherever the model is)
    engines.py   where chunks run: in the driver, local processes, or Dask; the model as verified bytes
    manifest.py  the parts directory and job manifest: resume and exactly-once
    audit.py     audit records per row (``--audit``), stored once per job row
    progress.py  progress bar / plain progress lines and the summary
    job.py       parameters -> checks -> chunks -> final file
    command.py   the ``explain-service batch`` click command

Output layout (one row per valid input row, in input order):

* the input columns, in input order: features with their schema types
  (numeric float64, integer int64, boolean bool, categorical string); every
  other column passed through unchanged (text from CSV, Arrow type from
  Parquet), so ids come along;
* ``audit_id`` with ``--audit``: the id of the row's audit record;
* ``prediction`` (class label, or value for regressors) and ``proba.<class>``;
* ``shap.target``, ``shap.output``, ``shap.base_value``, ``shap.<feature>`` per
  original input feature, ``shap.additivity_residual``;
* ``lime.target``, ``lime.intercept``, ``lime.score``, ``lime.<feature>`` when
  ``lime`` is asked for; ``counterfactual.json`` (the method's JSON answer) when
  ``counterfactual`` is; any other registered method as ``<method>.json``.

The Parquet schema metadata ``explain_service`` records the model (name,
version, sha256), methods, target, options and library versions. Rejected rows
go to ``OUT.rejected.jsonl`` as ``{"row", "errors", "input"}`` objects (``row``
is the 0-based input row), in input order; so do CSV rows that cannot be read as
rows (wrong number of fields, bytes that are not UTF-8), with ``errors`` under
``_row`` (or the field holding the bad bytes) and ``input`` the fields as found.

Counterfactuals are searched one row per call, so each row gets the method's
whole ``time_budget_ms`` as an API request for it would. With an audit store
(``--audit``) the rows are explained through
:class:`~explain_service.service.ExplainService`, exactly as for an API
request, and each explained row gets the audit record that request would have
stored; its unguessable id (see :mod:`.audit`) is the row's ``audit_id`` column,
and the caller's ``--id-columns`` go into the record's body. Apart from that
column the output file is the same as without an audit store.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use: the command line registers ``batch`` without paying for pandas and the models.
_EXPORTS = {
    "JobFailed": "job",
    "JobRefused": "job",
    "JobSpec": "job",
    "prepare": "job",
    "run_job": "job",
    "Progress": "progress",
    "Summary": "progress",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
