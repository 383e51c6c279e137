"""The do-it-yourself peer: FastAPI under uvicorn with ``shap.TreeExplainer``, as a team would write it.

What a data scientist ships when asked for "SHAP over HTTP": load the fitted pipeline once, and per
request build a DataFrame from the JSON rows, run the pipeline's preprocessing, ``predict_proba``,
``TreeExplainer.shap_values``, sum one-hot columns back to the input features and answer JSON. No
input validation beyond JSON, no audit record, no provenance. The pipeline pieces are read with the
service's own registry loader (the artifacts are never unpickled); loading is outside the timing.

Run: ``DIY_MODELS_DIR=bench/out/models uvicorn --factory bench.diy_server:create_app``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import shap
from fastapi import FastAPI, HTTPException

from explain_service.registry.store import ModelRegistry


class DiyModel:
    """A pipeline's preprocessing and estimator, a TreeExplainer and the one-hot owner of each column."""

    def __init__(self, loaded: Any) -> None:
        self.pre = loaded.preprocessor
        self.estimator = loaded.estimator
        self.names = list(loaded.schema.names)
        self.class_names = list(loaded.class_names)
        self.explainer = shap.TreeExplainer(self.estimator)
        columns = list(self.pre.get_feature_names_out())
        owners = [max((f for f in self.names if c.split("__", 1)[1].startswith(f)), key=len) for c in columns]
        self.owner_index = np.array([self.names.index(o) for o in owners])

    def explain(self, instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
        Xt = self.pre.transform(pd.DataFrame(instances, columns=self.names))
        proba = self.estimator.predict_proba(Xt)
        sv = self.explainer.shap_values(Xt)
        per_feature = np.zeros((len(Xt), len(self.names)))
        np.add.at(per_feature.T, self.owner_index, np.asarray(sv).T)
        base = float(np.ravel(self.explainer.expected_value)[0])
        return [
            {
                "prediction": {
                    "label": self.class_names[int(p.argmax())],
                    "probabilities": dict(zip(self.class_names, p.tolist(), strict=True)),
                },
                "shap": {"base_value": base, "values": dict(zip(self.names, v.tolist(), strict=True))},
            }
            for p, v in zip(proba, per_feature, strict=True)
        ]


def create_app() -> FastAPI:
    registry = ModelRegistry(os.environ.get("DIY_MODELS_DIR", "bench/out/models"))
    models = {name: DiyModel(registry.get(name)) for name in registry.names()}
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/explain/{name}")
    async def explain(name: str, body: dict[str, Any]) -> dict[str, Any]:
        model = models.get(name)
        if model is None:
            raise HTTPException(404, "no such model")
        return {"explanations": model.explain(body["instances"])}

    return app
