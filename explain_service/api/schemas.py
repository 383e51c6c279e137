"""Request and response envelopes of the JSON API (the OpenAPI document is built from these).

Requests are checked here, at the edge: ``options`` holds one object per method, each validated
by that method's own options schema (strict types: ``"500"`` is not a number), and naming a method
in ``options`` that ``methods`` does not ask for is an error. The loaded body keeps the options as
sent (the audit record stores the request, not its defaults). Responses are typed down to each
method's result, so the document says what every field of an answer is.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, pre_load, validate

from explain_service.audit.reviews import ACTIONS, MAX_COMMENT, STATUSES
from explain_service.audit.suspensions import MAX_REASON
from explain_service.errors import MAX_LISTED_ERRORS
from explain_service.explainers import EXPLAINERS
from explain_service.fields import StrictBoolean
from explain_service.registry.review_rules import RULE_NAMES
from explain_service.service import MAX_REFERENCE, METHOD_ORDER, STRICT_RANGES


class CheckedNested(fields.Nested):
    """A nested object validated by its schema but loaded as sent (no defaults filled in)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, partial: Any = None, **kwargs: Any
    ) -> Any:
        super()._deserialize(value, attr, data, partial=partial, **kwargs)
        return value


MethodOptions = Schema.from_dict(
    {
        **{
            name: CheckedNested(
                EXPLAINERS[name].options_schema,
                metadata={"description": f"Options of the {name} method."},
            )
            for name in METHOD_ORDER
            if name in EXPLAINERS
        },
        STRICT_RANGES: StrictBoolean(
            metadata={"description": "Refuse values outside the [min, max] seen at registration (422)."}
        ),
    },
    name="MethodOptions",
)


class PredictRequest(Schema):
    @pre_load
    def _no_unknown_keys(self, data: Any, **_: Any) -> Any:
        """Unknown top-level keys, listed up to the cap without marshmallow's per-key bookkeeping."""
        if isinstance(data, dict):
            unknown = [k for k in data if k not in self.load_fields]
            if unknown:
                shown = MAX_LISTED_ERRORS - 1 if len(unknown) > MAX_LISTED_ERRORS else len(unknown)
                errors: dict[str, Any] = {k: ["Unknown field."] for k in unknown[:shown]}
                if len(unknown) > shown:
                    errors["_more"] = [f"{len(unknown) - shown} more unknown fields are not listed."]
                raise ValidationError(errors)
        return data

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
    target = fields.String(
        load_default=None,
        allow_none=True,
        metadata={"description": "Class name to explain (classifiers); default: the predicted class."},
    )
    references = fields.List(
        fields.String(allow_none=True, validate=validate.Length(max=MAX_REFERENCE)),
        load_default=None,
        metadata={
            "description": "Optional, one per instance, in the same order: the caller's own case or "
            f"application number (at most {MAX_REFERENCE} characters, null for none). Stored in the "
            "audit record and searchable by reviewers; never given to the model."
        },
    )
    options = CheckedNested(
        MethodOptions,
        load_default=dict,
        metadata={
            "description": 'Per requested method, e.g. {"shap": {"output": "probability"}}, and '
            '"strict_ranges": true to refuse values outside the ranges seen at registration.'
        },
    )

    @pre_load
    def _options_name_requested_methods(self, data: Any, **_: Any) -> Any:
        """Options for a method that is not asked are refused before anything in them is read."""
        if not isinstance(data, dict) or not isinstance(data.get("options"), dict):
            return data
        methods = data.get("methods", ["shap"])
        if not isinstance(methods, list):
            return data
        extra = [name for name in data["options"] if name in METHOD_ORDER and name not in methods]
        if extra:
            message = "Options for a method that is not requested in methods."
            raise ValidationError({"options": {name: [message] for name in extra}})
        return data


class ReviewRouting(Schema):
    required = fields.Boolean(metadata={"description": "Whether the model's rules route this to a human."})
    rules = fields.List(
        fields.String(validate=validate.OneOf(RULE_NAMES)), metadata={"description": "The rules that fired."}
    )


class FeatureValue(fields.Raw):
    """A feature's value: a number, a string (category) or a boolean, as the model's schema says."""

    def __init__(self, **kwargs: Any) -> None:
        meta = {"oneOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}]}
        super().__init__(metadata={**meta, **kwargs.pop("metadata", {})}, **kwargs)


def _per_feature(description: str) -> fields.Dict:
    return fields.Dict(keys=fields.String(), values=fields.Float(), metadata={"description": description})


class ModelRefSchema(Schema):
    name = fields.String()
    version = fields.String()
    sha256 = fields.String()


class PredictionSchema(Schema):
    label = fields.String()
    probabilities = fields.Dict(keys=fields.String(), values=fields.Float())
    value = fields.Float()


class ShapParams(Schema):
    background_sha256 = fields.String(allow_none=True)
    background_size = fields.Integer()
    max_evals = fields.Integer()
    evaluations = fields.Integer()
    permutations = fields.Integer()
    seed = fields.Integer()


class ShapSchema(Schema):
    target = fields.String(allow_none=True, metadata={"description": "Class explained; null for regressors."})
    output = fields.String(validate=validate.OneOf(["log_odds", "probability", "raw"]))
    base_value = fields.Float()
    values = _per_feature("Per input feature (one-hot columns summed back).")
    additivity_residual = fields.Float(metadata={"description": "output - base_value - sum(values)"})
    algorithm = fields.String(metadata={"description": "The path taken, e.g. xgboost_tree_path_dependent."})
    params = fields.Nested(ShapParams)


class LimeStability(Schema):
    seeds = fields.Integer()
    top_k = fields.Integer()
    top_k_jaccard = fields.Float(
        metadata={"description": "Mean pairwise Jaccard index of the top-k features."}
    )


class LimeSchema(Schema):
    target = fields.String(allow_none=True, metadata={"description": "Class explained; null for regressors."})
    intercept = fields.Float()
    weights = _per_feature("Surrogate slopes per input feature.")
    contributions = _per_feature("What each feature's value adds compared with an average background row.")
    score = fields.Float(metadata={"description": "Weighted local R² of the surrogate."})
    prediction_local = fields.Float()
    seed = fields.Integer()
    num_samples = fields.Integer()
    stability = fields.Nested(LimeStability)


class ChangeSchema(Schema):
    from_ = FeatureValue(data_key="from")
    to = FeatureValue()


class CounterfactualItem(Schema):
    instance = fields.Dict(keys=fields.String(), values=FeatureValue())
    changes = fields.Dict(keys=fields.String(), values=fields.Nested(ChangeSchema))
    prediction = fields.Nested(PredictionSchema)


class CounterfactualMetrics(Schema):
    validity = fields.Float(allow_none=True)
    sparsity = fields.Float(allow_none=True)
    proximity = fields.Float(allow_none=True)
    diversity = fields.Float(allow_none=True)


class CounterfactualSchema(Schema):
    target = fields.String(allow_none=True, metadata={"description": "Class aimed at; null for regressors."})
    desired_range = fields.List(fields.Float(), validate=validate.Length(equal=2))
    counterfactuals = fields.List(fields.Nested(CounterfactualItem))
    metrics = fields.Nested(CounterfactualMetrics)
    seed = fields.Integer()
    message = fields.String(metadata={"description": "Why fewer counterfactuals than asked came back."})


class ReasonSchema(Schema):
    feature = fields.String()
    value = FeatureValue()
    contribution = fields.Float()
    text = fields.String()


class ExplanationSchema(Schema):
    id = fields.String()
    prediction = fields.Nested(PredictionSchema)
    flags = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={
            "description": "out_of_range: features outside the observed [min, max]; missing: features sent null."
        },
    )
    shap = fields.Nested(ShapSchema)
    lime = fields.Nested(LimeSchema)
    counterfactual = fields.Nested(CounterfactualSchema)
    reasons = fields.List(fields.Nested(ReasonSchema))
    review = fields.Nested(ReviewRouting)
    reference = fields.String(metadata={"description": "The caller's reference, when one was sent."})
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
    description = fields.String()


class ConstraintDoc(Schema):
    mutable = fields.Boolean()
    direction = fields.String(validate=validate.OneOf(["increase", "decrease"]))
    range = fields.List(fields.Float(), validate=validate.Length(equal=2))
    forbidden = fields.List(
        fields.String(), metadata={"description": "Categories a counterfactual may not use."}
    )


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
    description = fields.String(allow_none=True)
    intended_use = fields.String(metadata={"description": "What the model is for, as its owner states"})
    owner = fields.String(metadata={"description": "Who answers for the model"})
    class_names = fields.List(fields.String())
    favorable = fields.String(allow_none=True)
    features = fields.List(fields.Nested(FeatureSchemaDoc))
    constraints = fields.Dict(keys=fields.String(), values=fields.Nested(ConstraintDoc))
    sensitive = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.Float(), allow_none=True),
        metadata={
            "description": "Sensitive features and their groups: bin edges for numeric features "
            "(bins [a, b), the last one [a, b]), null for features grouped by value."
        },
    )
    methods = fields.List(fields.String())
    shap_outputs = fields.List(fields.String())
    estimator = fields.String(metadata={"description": "The estimator's class"})
    shap_path = fields.String(metadata={"description": "The SHAP path this model takes"})
    transform_path = fields.String(metadata={"description": "How rows are transformed before the model"})
    created_at = fields.String()
    libraries = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        metadata={"description": "Library versions at registration (review and admin keys only)"},
    )
    review_rules = fields.Dict(metadata={"description": "When an explanation is routed to a human reviewer."})
    suspension = fields.Nested(
        "SuspensionSchema",
        allow_none=True,
        metadata={
            "description": "The suspension in force for this version (its own or the model's), or null."
        },
    )


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
    batch = fields.Dict(
        allow_none=True,
        metadata={
            "description": "A batch row's record (batch --audit): the job id, the 0-based input row and "
            "the values of --id-columns ({column: value}); null for an API call."
        },
    )


class StoredExplanation(ExplainResponse):
    audit = fields.Nested(AuditFields)
    status = fields.String(
        validate=validate.OneOf(STATUSES),
        metadata={"description": "The review status, derived from its reviews."},
    )
    decision = fields.Raw(
        allow_none=True,
        metadata={"description": "The decision a reviewer substituted, when the status is overridden."},
    )


class ReplayReport(Schema):
    id = fields.String()
    model = fields.Nested(ModelRefSchema)
    identical = fields.Boolean()
    differing = fields.List(fields.String())
    reason = fields.String()


class ReviewRequest(Schema):
    action = fields.String(required=True, validate=validate.OneOf(ACTIONS))
    comment = fields.String(
        load_default=None,
        allow_none=True,
        metadata={
            "description": f"Required for flag, escalate and override; at most {MAX_COMMENT} characters."
        },
    )
    decision = fields.Raw(
        load_default=None,
        allow_none=True,
        metadata={
            "oneOf": [{"type": "string"}, {"type": "number"}],
            "description": "Override only: the decision the reviewer substitutes, one of the model's class "
            "names (a number for a regression model).",
        },
    )


class ReviewEventSchema(Schema):
    seq = fields.Integer(metadata={"description": "The review's position in the audit chain."})
    id = fields.String(metadata={"description": "The review's audit record id."})
    record_id = fields.String(metadata={"description": "The explanation reviewed."})
    action = fields.String(validate=validate.OneOf(ACTIONS))
    comment = fields.String()
    decision = fields.Raw(allow_none=True, metadata={"oneOf": [{"type": "string"}, {"type": "number"}]})
    by = fields.String(allow_none=True, metadata={"description": "The reviewer's key name."})
    role = fields.String()
    created_at = fields.String()


class ReviewList(Schema):
    id = fields.String(metadata={"description": "The explanation's id."})
    status = fields.String(validate=validate.OneOf(STATUSES))
    decision = fields.Raw(
        allow_none=True, metadata={"description": "The override's decision when the status is overridden."}
    )
    reviews = fields.List(fields.Nested(ReviewEventSchema), metadata={"description": "Oldest first."})


class SuspendRequest(Schema):
    reason = fields.String(
        required=True,
        validate=validate.Length(min=1, max=MAX_REASON),
        metadata={"description": "Why: shown to every caller in the 503 answer and kept in the audit chain."},
    )


class ResumeRequest(Schema):
    reason = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=MAX_REASON))


class SuspensionSchema(Schema):
    name = fields.String()
    version = fields.String(allow_none=True, metadata={"description": "null: every version of the model"})
    scope = fields.String(validate=validate.OneOf(["model", "version"]))
    reason = fields.String()
    by = fields.String(allow_none=True, metadata={"description": "The admin key's name (or cli:<login>)."})
    since = fields.String()
    record_id = fields.String(allow_none=True, metadata={"description": "Its audit record."})


class SuspensionAnswer(Schema):
    suspended = fields.Boolean()
    suspension = fields.Nested(SuspensionSchema)
