"""Request and answer of ``POST /v1/models/{name}:fairness`` (the OpenAPI document is built from these)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from explain_service.api.schemas import ModelRefSchema, PredictRequest
from explain_service.fairness.audit import DEFAULT_RESAMPLES, MAX_RESAMPLES
from explain_service.fields import StrictBoolean, StrictFloat, StrictInteger
from explain_service.registry.schema import NUMERIC_BOUND

MAX_SEED = 2**31 - 1
HTTP_MAX_RESAMPLES = min(MAX_RESAMPLES, 5_000)


class FairnessRequest(PredictRequest):
    labels = fields.List(
        fields.Raw(),
        required=True,
        metadata={"description": "The true class name of each instance, in order."},
    )
    sensitive = fields.List(
        fields.String(),
        load_default=None,
        validate=validate.Length(min=1, max=8),
        metadata={
            "description": "Features to group by (default: the model's registered sensitive features)."
        },
    )
    bins = fields.Dict(
        keys=fields.String(),
        values=fields.List(StrictFloat(bound=NUMERIC_BOUND), validate=validate.Length(min=2, max=64)),
        load_default=dict,
        metadata={"description": "Bin edges per numeric feature, replacing the registered ones."},
    )
    intersect = StrictBoolean(
        load_default=False, metadata={"description": "Also audit the intersection of the features."}
    )
    seed = StrictInteger(
        load_default=0,
        validate=validate.Range(min=0, max=MAX_SEED),
        metadata={"description": "Bootstrap seed."},
    )
    resamples = StrictInteger(
        load_default=DEFAULT_RESAMPLES,
        validate=validate.Range(min=0, max=HTTP_MAX_RESAMPLES),
        metadata={"description": "Bootstrap resamples (0: no intervals)."},
    )


class GroupFigures(Schema):
    count = fields.Integer()
    selection_rate = fields.Float(allow_none=True)
    true_positive_rate = fields.Float(allow_none=True)
    false_positive_rate = fields.Float(allow_none=True)


class Interval(Schema):
    low = fields.Float(allow_none=True)
    high = fields.Float(allow_none=True)


class FourFifths(Schema):
    threshold = fields.Float()
    ratio = fields.Float(allow_none=True)
    flagged = fields.Boolean(metadata={"description": "The demographic parity ratio is below the threshold."})


class FeatureFigures(Schema):
    groups = fields.Dict(keys=fields.String(), values=fields.Nested(GroupFigures))
    demographic_parity_difference = fields.Float(allow_none=True)
    demographic_parity_ratio = fields.Float(allow_none=True)
    equal_opportunity_difference = fields.Float(allow_none=True)
    equalized_odds_difference = fields.Float(allow_none=True)
    intervals = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(Interval),
        metadata={"description": "Bootstrap 95% interval of each of the four metrics."},
    )
    group_sizes = fields.Dict(keys=fields.String(), values=fields.Integer())
    four_fifths_rule = fields.Nested(FourFifths)
    warnings = fields.List(fields.String())


class RejectedRow(Schema):
    row = fields.Integer()
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))


class AuditedData(Schema):
    source = fields.String()
    format = fields.String()
    sha256 = fields.String()
    size = fields.Integer()
    rows = fields.Integer()
    used = fields.Integer()
    rejected = fields.Integer()
    rejected_examples = fields.List(fields.Nested(RejectedRow))


class Bootstrap(Schema):
    resamples = fields.Integer()
    seed = fields.Integer()
    confidence = fields.Float()


class FairnessAnswer(Schema):
    id = fields.String(metadata={"description": "The audit record of this audit (kind fairness)."})
    model = fields.Nested(ModelRefSchema)
    positive = fields.String(metadata={"description": "The favourable class (else the second class)."})
    label = fields.String(allow_none=True)
    data = fields.Nested(AuditedData)
    bootstrap = fields.Nested(Bootstrap)
    by_feature = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(FeatureFigures),
        metadata={"description": 'Per sensitive feature, and per intersection ("sex & age") when asked.'},
    )
    warnings = fields.List(fields.String())


class GroupImportance(Schema):
    count = fields.Integer()
    mean_abs_shap = fields.Dict(keys=fields.String(), values=fields.Float())


class ReferenceSet(Schema):
    source = fields.String(metadata={"description": '"background" (the registration\'s sample) or a file.'})
    rows = fields.Integer()
    sha256 = fields.String(metadata={"description": "sha256 of the explained rows as CSV."})
    seed = fields.Integer()


class ImportanceAnswer(Schema):
    model = fields.Nested(ModelRefSchema)
    reference = fields.Nested(ReferenceSet)
    target = fields.String(allow_none=True, metadata={"description": "The class every row is explained for."})
    output = fields.String()
    algorithm = fields.String()
    mean_abs_shap = fields.Dict(
        keys=fields.String(), values=fields.Float(), metadata={"description": "Per feature, largest first."}
    )
    by_group = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(keys=fields.String(), values=fields.Nested(GroupImportance)),
        metadata={"description": "Per sensitive feature and group, the same means."},
    )


class BeeswarmQuery(Schema):
    feature = fields.String(
        load_default=None,
        metadata={"description": "A sensitive feature, to draw only the rows of one group."},
    )
    group = fields.String(
        load_default=None, metadata={"description": 'That group\'s label, e.g. "[25, 40)".'}
    )
