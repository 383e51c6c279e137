"""Reading and writing model artifacts without pickle.

Two formats are accepted, and nothing else:

* ``skops`` for scikit-learn objects (a zip archive of JSON and arrays). Before
  loading, the archive's untrusted types are listed and checked against
  :data:`TRUSTED_SKOPS_TYPES`; only types on that explicit allowlist are passed
  to ``skops.io.loads``. The result of ``get_untrusted_types`` is never fed back
  in blindly.
* ``xgboost-ubj`` for XGBoost models, in XGBoost's own UBJSON format.

Every artifact's sha256 is checked against the manifest *before* a byte of it is
deserialized, and the bytes that were hashed are the bytes that are parsed.
Pickle-family files (pickle, joblib, dill, cloudpickle) are refused by name and
by content sniffing.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import skops.io as sio

from explain_service.errors import ArtifactRefused, IntegrityError

# Types outside skops' default trust set that our supported estimators contain.
# Each entry is a plain data holder of scikit-learn with no code execution on load.
TRUSTED_SKOPS_TYPES: frozenset[str] = frozenset(
    {
        "sklearn.tree._tree.Tree",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
        "sklearn._loss.loss.HalfBinomialLoss",
        "sklearn._loss.loss.HalfMultinomialLoss",
        "sklearn._loss.loss.HalfSquaredError",
        "sklearn._loss.loss.AbsoluteError",
        "sklearn._loss.loss.HuberLoss",
        "sklearn._loss.loss.PinballLoss",
        "sklearn._loss.loss.ExponentialLoss",
        "sklearn._loss.link.IdentityLink",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.link.MultinomialLogit",
        "sklearn._loss.link.Interval",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn.utils._bunch.Bunch",
        "collections.OrderedDict",
        "builtins.slice",
        "numpy.dtype",  # SimpleImputer's fitted dtype: rebuilt from its name, no code runs
    }
)

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".dill", ".cloudpickle", ".pck", ".sav")
FORMATS = ("skops", "xgboost-ubj")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def looks_like_pickle(data: bytes) -> bool:
    """True when ``data`` starts like a pickle stream (protocol 2+ or a protocol-0 opcode)."""
    if not data:
        return False
    if data[0] == 0x80 and len(data) > 1 and data[1] <= 5:
        return True
    return data[:1] in (b"(", b"c", b"]", b"}") and data[:1] != b"{"


def read_verified(path: Path, expected_sha256: str) -> bytes:
    """Read ``path`` and return its bytes only if they hash to ``expected_sha256``."""
    if path.name.lower().endswith(PICKLE_SUFFIXES):
        raise ArtifactRefused(str(path), "pickle-family files are never loaded")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IntegrityError(str(path), f"cannot read: {exc.strerror}") from None
    actual = sha256_bytes(data)
    if actual != expected_sha256:
        raise IntegrityError(str(path), f"sha256 {actual} does not match manifest {expected_sha256}")
    return data


def untrusted_types(data: bytes) -> list[str]:
    """Types in a skops archive that are neither skops-trusted nor on our allowlist."""
    found = sio.get_untrusted_types(data=data)
    return sorted(t for t in found if t not in TRUSTED_SKOPS_TYPES)


def load_skops(data: bytes, *, where: str) -> Any:
    """Deserialize a verified skops archive, refusing any type off the allowlist."""
    if looks_like_pickle(data):
        raise ArtifactRefused(where, "content is a pickle stream, not a skops archive")
    if not data.startswith(b"PK"):
        raise ArtifactRefused(where, "not a skops archive")
    try:
        refused = untrusted_types(data)
    except Exception as exc:
        raise ArtifactRefused(where, f"unreadable skops archive: {exc}") from None
    if refused:
        raise ArtifactRefused(where, "types not on the allowlist: " + ", ".join(refused))
    present = sorted(t for t in sio.get_untrusted_types(data=data) if t in TRUSTED_SKOPS_TYPES)
    return sio.loads(data, trusted=present)


def dump_skops(obj: Any) -> bytes:
    """Serialize a scikit-learn object with skops, refusing types we would not load back."""
    data = sio.dumps(obj)
    refused = untrusted_types(data)
    if refused:
        raise ArtifactRefused(
            type(obj).__name__, "contains types that cannot be loaded safely: " + ", ".join(refused)
        )
    return data


def load_xgboost(data: bytes, cls_name: str, *, where: str) -> Any:
    """Load an XGBoost model (Booster or sklearn wrapper) from verified UBJSON bytes."""
    import xgboost as xgb

    if looks_like_pickle(data):
        raise ArtifactRefused(where, "content is a pickle stream, not XGBoost UBJSON")
    if not data.startswith(b"{"):
        raise ArtifactRefused(where, "not an XGBoost UBJSON model")
    classes = {"Booster": xgb.Booster, "XGBClassifier": xgb.XGBClassifier, "XGBRegressor": xgb.XGBRegressor}
    if cls_name not in classes:
        raise ArtifactRefused(where, f"unsupported XGBoost class {cls_name!r}")
    try:
        if cls_name == "Booster":
            booster = xgb.Booster()
            booster.load_model(bytearray(data))
            return booster
        model = classes[cls_name]()
        # The sklearn wrappers read from a path; write the verified bytes to a private file.
        with tempfile.NamedTemporaryFile(suffix=".ubj") as fh:
            fh.write(data)
            fh.flush()
            model.load_model(fh.name)
        return model
    except xgb.core.XGBoostError as exc:
        raise ArtifactRefused(where, f"XGBoost could not parse the model: {exc}") from None


def dump_xgboost(model: Any) -> bytes:
    """Serialize an XGBoost Booster or sklearn wrapper to UBJSON bytes."""
    import xgboost as xgb

    booster = model if isinstance(model, xgb.Booster) else None
    if booster is not None:
        return bytes(booster.save_raw(raw_format="ubj"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.ubj"
        model.save_model(path)
        return path.read_bytes()
