"""The trail index: projected from the chain by seq, searchable with keyset pages, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest

from explain_service.audit.bulk import append_in_batches
from explain_service.audit.projections import TrailIndex
from explain_service.audit.search import Filters
from explain_service.audit.store import AuditEntry, AuditStore
from explain_service.errors import Forbidden, ValidationFailed


def body(
    i: int, *, label: str = "good", lime: float = 0.9, oor: bool = False, required: bool = False
) -> dict:
    explanation = {
        "prediction": {"label": label, "probabilities": {"bad": 0.3, "good": 0.7}},
        "flags": {"out_of_range": ["age"]} if oor else {},
        "shap": {"base_value": 0.1, "values": {"age": 0.2, "job": 0.1}, "additivity_residual": 0.0},
        "lime": {"score": lime},
    }
    out = {"kind": "explanation", "explanation": explanation, "reference": f"case-{i:04d}"}
    if required:
        out["review"] = {"required": True, "rules": ["probability_band"]}
    return out


def entry(i: int, model: str = "credit", caller: str | None = "app", **kw) -> AuditEntry:
    return AuditEntry(body(i, **kw), model, "1", "f" * 64, caller=caller)


@pytest.fixture
def store(url: str):
    with AuditStore(url) as s:
        yield s


@pytest.fixture
def index(store: AuditStore):
    idx = TrailIndex(store)
    yield idx
    idx.close()


def test_search_filters_match_a_direct_scan_of_the_chain(store: AuditStore, index: TrailIndex) -> None:
    entries = [
        entry(i, model="credit" if i % 3 else "fraud", label="bad" if i % 4 == 0 else "good",
              lime=0.2 if i % 5 == 0 else 0.9, oor=i % 7 == 0, caller="a" if i % 2 else "b")
        for i in range(120)
    ]  # fmt: skip
    assert append_in_batches(store, entries, batch_size=25) == 120
    assert store.verify().ok
    every = {r.id: r for r in store.list_records(limit=1000)}

    def expected(pred) -> list[int]:
        return sorted((r.seq for r in every.values() if pred(r)), reverse=True)

    cases = [
        (Filters(), lambda r: True),
        (Filters(model_name="fraud"), lambda r: r.model_name == "fraud"),
        (Filters(label="bad", caller="a"), lambda r: r.body["explanation"]["prediction"]["label"] == "bad"
         and r.caller == "a"),
        (Filters(flags=("low_lime_r2",)), lambda r: r.body["explanation"]["lime"]["score"] < 0.5),
        (Filters(flags=("low_lime_r2", "out_of_range")), lambda r: r.body["explanation"]["lime"]["score"] < 0.5
         and bool(r.body["explanation"]["flags"])),
        (Filters(reference="case-0042"), lambda r: r.body["reference"] == "case-0042"),
    ]  # fmt: skip
    for filters, pred in cases:
        want = expected(pred)
        got, after = [], None
        while True:
            page = index.search(filters, after=after, limit=7)
            assert page.total == len(want)
            got += [item.seq for item in page.items]
            after = page.next_after
            if after is None:
                break
        assert got == want, filters
    oldest = index.search(Filters(model_name="fraud"), order="asc", limit=3)
    assert [i.seq for i in oldest.items] == sorted(expected(lambda r: r.model_name == "fraud"))[:3]


def test_dates_filter_on_created_at(store: AuditStore, index: TrailIndex) -> None:
    stored = store.append([entry(i) for i in range(3)])
    moment = stored[0].created_at
    assert index.search(Filters(since=moment)).total == 3
    assert index.search(Filters(until=moment)).total == 0
    assert index.search(Filters(since=moment + timedelta(days=1))).total == 0
    with pytest.raises(ValidationFailed, match="since"):
        Filters(since=datetime(2026, 1, 1))
    with pytest.raises(ValidationFailed, match="status"):
        Filters(statuses=("done",))


def test_reviews_derive_status_and_queue(store: AuditStore, index: TrailIndex) -> None:
    a, b, c = store.append([entry(0), entry(1, required=True), entry(2)])
    # A record routed to a human is in the queue from the start.
    assert [i.id for i in index.queue().items] == [b.id]
    index.add_review(a, action="flag", comment="odd", by="rev", role="review")
    index.add_review(c, action="escalate", comment="needs a second line", by="rev", role="review")
    assert [i.id for i in index.queue().items] == [b.id, a.id, c.id]
    index.add_review(b, action="approve", by="rev", role="review")
    with pytest.raises(Forbidden, match="escalated"):
        index.add_review(c, action="approve", by="rev", role="review")
    index.add_review(c, action="override", comment="policy 4.2", decision="bad", by="boss", role="admin")
    assert [i.id for i in index.queue().items] == [a.id]
    assert index.state_of(c.id).status == "overridden"
    assert index.get(c.id).decision == "bad"
    assert [e.action for e in index.reviews(c.id)] == ["escalate", "override"]
    assert index.search(Filters(statuses=("overridden", "approved"))).total == 2
    assert store.verify().ok
    # The index is derived: rebuilt from the chain, it says the same.
    before = [i.to_dict() for i in index.search(limit=10).items]
    assert index.rebuild() == 7  # three explanations, four reviews
    assert [i.to_dict() for i in index.search(limit=10).items] == before


@pytest.mark.parametrize(
    ("action", "comment", "decision", "field"),
    [
        ("flag", None, None, "comment"),
        ("escalate", "  ", None, "comment"),
        ("override", "why", None, "decision"),
        ("override", "why", "maybe", "decision"),
        ("approve", None, "good", "decision"),
        ("delete", None, None, "action"),
    ],
)
def test_review_rules_name_the_field(store, index, action, comment, decision, field) -> None:
    (record,) = store.append([entry(0)])
    with pytest.raises(ValidationFailed) as caught:
        index.add_review(record, action=action, comment=comment, decision=decision, by="r", role="review")
    assert field in caught.value.errors
    assert index.reviews(record.id) == []


def test_a_race_past_an_escalation_does_not_undo_it(store: AuditStore, index: TrailIndex) -> None:
    """A review key's event appended after an escalation (both checked earlier) leaves it escalated."""
    from explain_service.audit.reviews import review_entry

    (record,) = store.append([entry(0)])
    store.append([review_entry(record, "escalate", "x", None, "r1", "review")])
    store.append([review_entry(record, "approve", "", None, "r2", "review")])
    assert index.state_of(record.id).status == "escalated"
    assert len(index.reviews(record.id)) == 2


def test_concurrent_catch_ups_project_each_record_once(store: AuditStore) -> None:
    append_in_batches(store, (entry(i) for i in range(3000)), batch_size=500)
    indexes = [TrailIndex(store) for _ in range(3)]
    errors: list[BaseException] = []

    def run(idx: TrailIndex) -> None:
        try:
            idx.catch_up()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(idx,)) for idx in indexes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    page = indexes[0].search(limit=1)
    assert page.total == 3000 and page.items[0].seq == 3000
    for idx in indexes:
        idx.close()


def test_audit_reindex_projects_and_rebuilds(store: AuditStore, url: str) -> None:
    from click.testing import CliRunner

    from explain_service.cli import main

    append_in_batches(store, (entry(i) for i in range(30)), batch_size=7)
    runner = CliRunner()
    result = runner.invoke(main, ["audit", "reindex", "--database-url", url])
    assert result.exit_code == 0 and "indexed 30 records" in result.output, result.output
    result = runner.invoke(main, ["audit", "reindex", "--database-url", url])
    assert "indexed 0 records" in result.output
    result = runner.invoke(main, ["audit", "reindex", "--rebuild", "--database-url", url])
    assert "indexed 30 records" in result.output
    index = TrailIndex(store)
    assert index.search(limit=1).total == 30
    index.close()


def test_an_index_of_another_format_is_rebuilt_from_the_chain(store: AuditStore, index: TrailIndex) -> None:
    from sqlalchemy import create_engine, update

    from explain_service.audit.index_tables import FORMAT, explanations, state

    store.append([entry(i) for i in range(5)])
    assert index.search().total == 5
    engine = create_engine(store.url)
    with engine.begin() as conn:  # an older version's index: another format, and a row it got wrong
        conn.execute(update(state).where(state.c.name == FORMAT).values(value=1))
        conn.execute(update(explanations).values(label="stale"))
    engine.dispose()
    fresh = TrailIndex(store)
    page = fresh.search()
    assert page.total == 5 and {item.label for item in page.items} == {"good"}
    fresh.close()
