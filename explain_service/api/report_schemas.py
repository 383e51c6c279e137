"""The transparency report's JSON shape, for the OpenAPI document (built by :mod:`explain_service.fairness.report`)."""

from __future__ import annotations

from marshmallow import Schema, fields

_Num = fields.Float(allow_none=True)


class ReportModel(Schema):
    name = fields.String()
    version = fields.String()
    sha256 = fields.String()
    task = fields.String()
    estimator = fields.String()
    registered_at = fields.String()


class ReportTrainingData(Schema):
    source = fields.String()
    rows = fields.Integer()
    features = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(),
        metadata={"description": "Per feature: kind, missing, and min/max/mean/std or category frequencies"},
    )


class ReportClasses(Schema):
    names = fields.List(fields.String())
    favourable = fields.String(allow_none=True)
    positive = fields.String(allow_none=True, metadata={"description": "Favourable class, else the second"})


class ReportProvenance(Schema):
    sha256 = fields.String()
    files = fields.Dict(keys=fields.String(), values=fields.String())
    libraries = fields.Dict(keys=fields.String(), values=fields.String())


class ReportCalibrationBin(Schema):
    mean_predicted = fields.Float()
    fraction_positive = fields.Float()


class ReportCalibration(Schema):
    about = fields.String()
    brier_score = fields.Float()
    bins = fields.List(fields.Nested(ReportCalibrationBin))


class ReportPerformance(Schema):
    data = fields.Dict(metadata={"description": "sha256, rows and rows used of the labelled set"})
    accuracy = fields.Float()
    positive = fields.String()
    roc_auc = _Num
    calibration = fields.Nested(ReportCalibration)


class ReportImportance(Schema):
    reference = fields.String()
    rows = fields.Integer()
    mean_abs_shap = fields.Dict(keys=fields.String(), values=fields.Float())


class ReportBiasAudit(Schema):
    id = fields.String(metadata={"description": "The audit's record id in the chain"})
    seq = fields.Integer()
    created_at = fields.String()
    data_sha256 = fields.String(allow_none=True)
    rows = fields.Integer(allow_none=True)
    positive = fields.String(allow_none=True)
    by_feature = fields.Dict(keys=fields.String(), values=fields.Dict())


class ReportGroupRate(Schema):
    decisions = fields.Integer()
    favourable = fields.Integer()
    selection_rate = _Num


class ReportFeatureDisparity(Schema):
    groups = fields.Dict(keys=fields.String(), values=fields.Nested(ReportGroupRate))
    compared_groups = fields.List(fields.String())
    demographic_parity_ratio = _Num
    demographic_parity_difference = _Num
    alert = fields.Boolean()


class ReportDisparity(Schema):
    window = fields.Dict(metadata={"description": "start, end (UTC days, inclusive) and days"})
    threshold = fields.Float()
    min_group = fields.Integer()
    alert = fields.Boolean()
    by_feature = fields.Dict(keys=fields.String(), values=fields.Nested(ReportFeatureDisparity))
    weekly = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(),
        metadata={
            "description": "Per feature and group, the selection rate per ISO week (last 12): "
            "[{period: Monday, decisions, selection_rate}]"
        },
    )


class ReportExplanationQuality(Schema):
    explanations = fields.Integer()
    shap = fields.Dict(metadata={"description": "count, over_additivity_bar, max_abs_additivity_residual"})
    lime = fields.Dict(metadata={"description": "count, r2_histogram (by tenth), r2_below_0_5"})
    counterfactual = fields.Dict(metadata={"description": "count, found_rate, budget_ran_out_rate"})


class ReportOversight(Schema):
    decisions = fields.Dict(keys=fields.String(), values=fields.Integer())
    status = fields.Dict(keys=fields.String(), values=fields.Integer())
    review_required = fields.Integer()
    reviews = fields.Integer()
    review_actions = fields.Dict(keys=fields.String(), values=fields.Integer())
    overrides = fields.Integer()
    escalations = fields.Integer()
    incidents = fields.Integer()
    suspensions = fields.Integer()
    bias_audits = fields.Integer()


class ReportChange(Schema):
    previous_version = fields.String()
    schema = fields.Dict(metadata={"description": "features added, removed, changed; classes changed"})
    importance_shift = fields.Dict(keys=fields.String(), values=fields.Dict())


class ReportEvidence(Schema):
    obligation = fields.String()
    asks = fields.String()
    answered_by = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "fields, pages, api, commands"},
    )
    counts = fields.Dict()


class TransparencyReport(Schema):
    format = fields.String()
    generated_at = fields.String()
    model = fields.Nested(ReportModel)
    description = fields.String()
    intended_use = fields.String()
    owner = fields.String()
    training_data = fields.Nested(ReportTrainingData)
    features = fields.List(fields.Dict())
    classes = fields.Nested(ReportClasses)
    provenance = fields.Nested(ReportProvenance)
    performance = fields.Nested(ReportPerformance, allow_none=True)
    importance = fields.Nested(ReportImportance, allow_none=True)
    bias_audit = fields.Nested(ReportBiasAudit, allow_none=True)
    disparity = fields.Nested(ReportDisparity)
    explanation_quality = fields.Nested(ReportExplanationQuality)
    oversight = fields.Nested(ReportOversight)
    change = fields.Nested(ReportChange, allow_none=True)
    evidence = fields.List(fields.Nested(ReportEvidence))


class ReportQuery(Schema):
    version = fields.String(metadata={"description": "A version; default the newest healthy one"})
