"""Request and response envelopes of the JSON API (the OpenAPI document is built from these)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from explain_service.service import METHOD_ORDER


class PredictRequest(Schema):
    instances = fields.List(
        fields.Raw(),
        required=True,
        validate=validate.Length(min=1),
        metadata={
            "description": "Rows as objects {feature: value}; see GET /v1/models/{name} for the schema."
        },
    )


class ExplainRequest(PredictRequest):
    methods = fields.List(
        fields.String(validate=validate.OneOf(METHOD_ORDER)),
        load_default=lambda: ["shap"],
        validate=validate.Length(min=1, max=len(METHOD_ORDER)),
    )
    target = fields.Raw(
        load_default=None,
        allow_none=True,
        metadata={"description": "Class name to explain (classifiers); default: the predicted class."},
    )
    options = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(),
        load_default=dict,
        metadata={"description": 'Per-method options, e.g. {"shap": {"output": "probability"}}.'},
    )


class ModelRefSchema(Schema):
    name = fields.String()
    version = fields.String()
    sha256 = fields.String()


class PredictionSchema(Schema):
    label = fields.String()
    probabilities = fields.Dict(keys=fields.String(), values=fields.Float())
    value = fields.Float()


class ShapSchema(Schema):
    target = fields.String(allow_none=True)
    output = fields.String(metadata={"description": "log_odds, probability or raw"})
    base_value = fields.Float()
    values = fields.Dict(
        keys=fields.String(), values=fields.Float(), metadata={"description": "Per input feature."}
    )
    additivity_residual = fields.Float(metadata={"description": "output - base_value - sum(values)"})
    algorithm = fields.String()
    params = fields.Dict()


class ExplanationSchema(Schema):
    id = fields.String()
    prediction = fields.Nested(PredictionSchema)
    shap = fields.Nested(ShapSchema)
    lime = fields.Dict()
    counterfactual = fields.Dict()
    reasons = fields.List(fields.Dict())
    plots = fields.Dict(keys=fields.String(), values=fields.String())


class ExplainResponse(Schema):
    model = fields.Nested(ModelRefSchema)
    explanations = fields.List(fields.Nested(ExplanationSchema))


class PredictResponse(Schema):
    model = fields.Nested(ModelRefSchema)
    predictions = fields.List(fields.Nested(PredictionSchema))


class FeatureSchemaDoc(Schema):
    name = fields.String()
    kind = fields.String()
    categories = fields.List(fields.String())
    min = fields.Float()
    max = fields.Float()


class VersionStatus(Schema):
    version = fields.String()
    status = fields.String(metadata={"enum": ["available", "unavailable"]})
    reason = fields.String(metadata={"description": "Why an unavailable version cannot be served."})


class ModelDescription(Schema):
    name = fields.String()
    version = fields.String()
    versions = fields.List(fields.String())
    version_status = fields.List(fields.Nested(VersionStatus))
    sha256 = fields.String()
    task = fields.String()
    description = fields.String()
    class_names = fields.List(fields.String())
    favorable = fields.String(allow_none=True)
    features = fields.List(fields.Nested(FeatureSchemaDoc))
    constraints = fields.Dict()
    methods = fields.List(fields.String())
    shap_outputs = fields.List(fields.String())


class ModelList(Schema):
    models = fields.List(fields.Dict())


class ErrorResponse(Schema):
    code = fields.Integer()
    status = fields.String()
    message = fields.String()
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))


class AuditFields(Schema):
    seq = fields.Integer()
    created_at = fields.String()
    caller = fields.String(allow_none=True)
    hash = fields.String()
    prev_hash = fields.String()
    instance = fields.Dict()
    request = fields.Dict()
    quality = fields.Dict()
    libraries = fields.Dict()
    plot_hashes = fields.Dict()


class StoredExplanation(ExplainResponse):
    audit = fields.Nested(AuditFields)


class ReplayReport(Schema):
    id = fields.String()
    model = fields.Nested(ModelRefSchema)
    identical = fields.Boolean()
    differing = fields.List(fields.String())
    reason = fields.String()
