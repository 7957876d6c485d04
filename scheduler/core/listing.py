"""Listing accepted actions a page at a time: what matches a query, and one page built from
the actions in memory and those only the archive holds, in submission (seq) order.

Every accepted action is in the archive (a submission is written before it is accepted),
but the core's copy of one in memory may be a step newer, so an action in memory is
judged and shown from memory. A page ends at the archive's last row when the archive had
more: a cursor never skips what the archive has not shown yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from mesh.schema import Action, ActionPage, ActionStatus, ListQuery
from mesh.stages import Stage
from scheduler.core.ledger import ActionEntry
from scheduler.core.records import Kept


def matches(query: ListQuery, spec: Callable[[], Action], stage: Stage,
            submitted_at: float) -> bool:
    """Whether an action matches the query's filters (`spec` is asked for only when job or
    tags are filtered on: a restored action's spec is parsed when first needed)."""
    if query.stage is not None and stage is not query.stage:
        return False
    if query.submitted_after is not None and submitted_at < query.submitted_after:
        return False
    if query.submitted_before is not None and submitted_at >= query.submitted_before:
        return False
    if query.account is None and query.job is None and not query.tags:
        return True
    action = spec()
    return ((query.account is None or action.account == query.account)
            and (query.job is None or action.job == query.job)
            and all(action.tags.get(k) == v for k, v in query.tags.items()))


def entry_matches(query: ListQuery, entry: ActionEntry) -> bool:
    # The account is known without the spec, saved or parsed.
    if (query.account is not None and query.job is None and not query.tags
            and entry.source.account != query.account):
        return False
    return matches(query, lambda: entry.shown_spec, entry.stage, entry.submitted_at)


def page(query: ListQuery, in_memory: Iterable[ActionEntry], archived: list[Kept],
         known: Callable[[str], bool]) -> ActionPage:
    """One page: the matching entries in memory past the cursor, merged with the archive's
    rows (`archived`, its answer to the query) for actions not in memory (`known`)."""
    horizon = archived[-1][0].seq if len(archived) == query.limit else None
    found: list[tuple[int, Callable[[], ActionStatus]]] = [
        (entry.seq, entry.status) for entry in in_memory
        if entry.seq > query.after and (horizon is None or entry.seq <= horizon)
        and entry_matches(query, entry)]
    found += [(kept[0].seq, _status_of(kept)) for kept in archived if not known(kept[0].id)]
    found.sort(key=lambda item: item[0])
    shown = found[:query.limit]
    if len(found) > query.limit:
        cursor: int | None = shown[-1][0]
    else:
        cursor = horizon  # None: nothing further anywhere
    return ActionPage(actions=[status() for _, status in shown], cursor=cursor)


def _status_of(kept: Kept) -> Callable[[], ActionStatus]:
    def status() -> ActionStatus:  # built only for what the page shows
        return ActionEntry.from_record(*kept).status()
    return status
