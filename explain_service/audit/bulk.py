"""Loading many records at once through the chain's own append path (the chain stays valid).

:func:`append_in_batches` hands the entries to :meth:`.store.AuditStore.append` ``batch_size`` at a
time: each batch is sealed onto the head and stored atomically, exactly as a request's records are, so
``audit verify`` holds after any bulk load, and an interrupted load leaves a valid chain holding every
batch that returned. It is the documented way to fill a trail for a benchmark or a migration; there is
no path that writes rows around the chain. Index the loaded trail afterwards with
:meth:`.projections.TrailIndex.catch_up` (or ``explain-service audit reindex``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import batched

from explain_service.audit.chain import AuditEntry
from explain_service.audit.store import AuditStore

BULK_BATCH = 1000


def append_in_batches(
    store: AuditStore,
    entries: Iterable[AuditEntry],
    *,
    batch_size: int = BULK_BATCH,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Append ``entries`` in order, ``batch_size`` per atomic append; return how many were stored.

    ``progress`` is called with the running total after each batch. An error stops the load; every
    batch before it is stored (and chained), nothing of the failing one.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    total = 0
    for batch in batched(entries, batch_size):
        total += len(store.append(list(batch)))
        if progress is not None:
            progress(total)
    return total
