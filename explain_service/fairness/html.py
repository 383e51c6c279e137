"""A bias audit as one self-contained HTML file (``explain-service fairness --html``).

The file carries its chart as an embedded PNG and its style in the page, so it can be mailed,
archived next to the audit record, or printed, with nothing else to fetch. Every value is
escaped by Jinja2's autoescape.
"""

from __future__ import annotations

import base64
from typing import Any

from jinja2 import Environment

from explain_service.plots.fairness import selection_rates
from explain_service.plots.render import render_png

TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Bias audit: {{ a.model.name }} {{ a.model.version }}</title>
<style>
body { font-family: "DejaVu Sans", Arial, sans-serif; color: #1b1b1b; margin: 1.5rem auto; max-width: 60rem;
       padding: 0 1rem; }
h1 { font-size: 1.4rem; margin-bottom: .2rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem; }
.meta { color: #5c5c5c; font-size: .85rem; } code { font-size: .85rem; }
table { border-collapse: collapse; margin: .4rem 0; font-size: .9rem; }
th, td { border-bottom: 1px solid #d0d0d0; padding: .25rem .7rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.flag { color: #b34700; font-weight: bold; } .ok { color: #006b4f; }
.warn { background: #fff4e0; border-left: 4px solid #d55e00; padding: .4rem .7rem; margin: .3rem 0; }
img { max-width: 100%; }
</style>
</head>
<body>
<h1>Bias audit of {{ a.model.name }} version {{ a.model.version }}</h1>
<p class="meta">Audit record <code>{{ a.id }}</code> &middot; model sha256 <code>{{ a.model.sha256[:16] }}</code>
&middot; data {{ a.data.source }} sha256 <code>{{ a.data.sha256[:16] }}</code><br>
{{ a.data.used }} rows audited ({{ a.data.rejected }} rejected) &middot; label column <code>{{ a.label }}</code>
&middot; positive outcome <b>{{ a.positive }}</b> &middot; {{ a.bootstrap.resamples }} bootstrap resamples,
seed {{ a.bootstrap.seed }}, {{ (a.bootstrap.confidence * 100) | round | int }}% intervals</p>
{% for w in a.warnings %}<div class="warn">{{ w }}</div>{% endfor %}
<img src="data:image/png;base64,{{ chart }}" alt="Selection rate per group">
<p class="meta">Each bar is a group's selection rate of <b>{{ a.positive }}</b> (n: its rows);
the dashed line is four fifths of the highest rate, and an orange bar, left of it, is a group the
four-fifths rule flags.</p>
{% for feature, f in a.by_feature.items() %}
<h2>{{ feature }}</h2>
<table>
<tr><th>group</th><th>count</th><th>selection rate</th><th>true positive rate</th><th>false positive rate</th></tr>
{% for group, g in f.groups.items() %}
<tr><td>{{ group }}</td><td>{{ g.count }}</td><td>{{ num(g.selection_rate) }}</td>
<td>{{ num(g.true_positive_rate) }}</td><td>{{ num(g.false_positive_rate) }}</td></tr>
{% endfor %}
</table>
<table>
<tr><th>metric</th><th>value</th><th>95% interval</th></tr>
{% for m in metrics %}
<tr><td>{{ m.replace("_", " ") }}</td><td>{{ num(f[m]) }}</td>
<td>{{ num(f.intervals[m].low) }} &ndash; {{ num(f.intervals[m].high) }}</td></tr>
{% endfor %}
</table>
<p>Four-fifths rule (demographic parity ratio &ge; 0.8):
{% if f.four_fifths_rule.flagged %}<span class="flag">flagged</span>{% else %}<span class="ok">passed</span>{% endif %}</p>
{% endfor %}
<p class="meta">Metric definitions are fairlearn's: differences are the largest minus the smallest group value,
the ratio the smallest over the largest selection rate; equalized odds is the larger of the true and false
positive rate differences.</p>
</body>
</html>
"""

_ENV = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render_audit_html(audit: dict[str, Any]) -> str:
    """The HTML report of one bias audit answer (with its record ``id``)."""
    from explain_service.fairness.metrics import METRICS

    fig = selection_rates(audit)
    chart = base64.b64encode(render_png(fig)).decode("ascii")
    return _ENV.from_string(TEMPLATE).render(a=audit, chart=chart, metrics=METRICS, num=_num)
