"""The queued requests, kept between passes in the order a pass takes them.

A pass orders a level's requests by (examined time, enqueue time, id) and, at its end,
stamps every request it looked at and did not match with its own time. Both would cost
the whole queue on every pass, so the queue keeps the order instead, and stamps in bulk:

- Requests of one account that a pass cannot tell apart (same labels, CPUs and memory)
  form a `Shape`: they match the same workers at the same quality under the same limits,
  so the pass decides per shape and walks requests only where it takes one.
- A shape keeps two sorted lists. `stamped` requests share one examined time, the
  account's `stamp` (or the shape's `frozen` time when a pass left the shape out while it
  stamped the rest of the account); they are ordered by (enqueue time, id). `fresh`
  requests (new, put back, or restored) hold their own, ordered by (examined, enqueue,
  id). Stamping an account at t sets one number; each fresh request is merged into
  `stamped` once, so an event costs what it adds, not what waits.

Worked example: account a's shape S holds stamped [r1, r2] (stamp 10) and fresh [r3]
(examined 0). A pass at t=12 looks at all three and matches none: a.stamp becomes 12 and
r3 is merged, giving stamped [r1, r2, r3] (12). A later pass that keeps S out while it
stamps a again at 15 (a fanout limit with free work disabled) first freezes S at 12.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import Counter
from collections.abc import ItemsView, Iterable, Iterator, MutableMapping, ValuesView
from typing import TypeAlias

from mesh.schema import EPSILON, AccountId, ActionId
from scheduler.core.quota.limits import Group, fanout_group
from scheduler.core.quota.model import Request

ShapeKey: TypeAlias = tuple[AccountId, frozenset[str], frozenset[str], float, int]
# A request's place in its level: the order upstream sorts a level by (plus our ties).
OrderKey: TypeAlias = tuple[float, float, ActionId]

# Fresh requests this many or fewer are inserted one by one when stamped; more are sorted in.
_FEW = 16


def _by_enqueue(request: Request) -> tuple[float, ActionId]:
    return request.enqueue_time, request.id


def _by_own_order(request: Request) -> OrderKey:
    return request.own_examined, request.enqueue_time, request.id


def _own_examined(request: Request) -> float:
    return request.own_examined


class Shape:
    """The queued requests of one account alike in labels and size (see the module)."""

    __slots__ = ("account", "base", "cpus", "follows", "fresh", "frozen", "group", "key",
                 "label", "memory", "provisionable", "quality", "stamped")

    def __init__(self, account: AccountQueue, key: ShapeKey, group: Group,
                 label: str | None) -> None:
        self.account = account
        self.key = key
        _, self.base, self.provisionable, self.cpus, self.memory = key
        self.quality = len(self.base)
        self.group = group
        self.label = label  # the base label it is filed under in its account's index
        self.stamped: list[Request] = []
        self.fresh: list[Request] = []
        self.follows = True  # `stamped` carries the account's stamp, else `frozen`
        self.frozen = 0.0

    def __len__(self) -> int:
        return len(self.stamped) + len(self.fresh)

    def __repr__(self) -> str:
        return f"Shape({self.key!r}, stamped={len(self.stamped)}, fresh={len(self.fresh)})"

    @property
    def stamp(self) -> float:
        """The examined time every request in `stamped` has."""
        return self.account.stamp if self.follows else self.frozen

    def any(self) -> Request:
        """One of its requests (the caller knows it is not empty): a shape's requests
        match, fit and count against limits alike."""
        return self.fresh[0] if self.fresh else self.stamped[0]

    def reexamine(self, request: Request, value: float) -> None:
        self.account.queue.reexamine(request, value)

    def count_upto(self, since: float) -> int:
        """How many of its requests were examined no later than `since`."""
        fresh = bisect_right(self.fresh, since, key=_own_examined)
        return fresh + (len(self.stamped) if self.stamp <= since else 0)

    def stream(self, since: float) -> Iterator[tuple[OrderKey, Request]]:
        """Its requests examined no later than `since`, in order, each with its key.

        The caller may take (dequeue) the request just yielded before asking for the next
        one; nothing else leaves the shape while it walks, so a position that no longer
        holds the yielded request already holds the next one.
        """
        fresh, stamped, stamp = self.fresh, self.stamped, self.stamp
        i = j = 0
        use_stamped = stamp <= since
        while True:
            f = fresh[i] if i < len(fresh) and fresh[i].own_examined <= since else None
            s = stamped[j] if use_stamped and j < len(stamped) else None
            if f is None and s is None:
                return
            f_key = (f.own_examined, f.enqueue_time, f.id) if f is not None else None
            s_key = (stamp, s.enqueue_time, s.id) if s is not None else None
            if s_key is None or (f_key is not None and f_key < s_key):
                assert f is not None and f_key is not None
                yield f_key, f
                if i < len(fresh) and fresh[i] is f:
                    i += 1
            else:
                assert s is not None
                yield s_key, s
                if j < len(stamped) and stamped[j] is s:
                    j += 1

    # ---- changes, through the queue only ------------------------------------------------

    def _add(self, request: Request) -> None:
        fresh = self.fresh
        if not fresh or _by_own_order(fresh[-1]) <= _by_own_order(request):
            fresh.append(request)  # in order already: a restart adds its queue sorted
        else:
            insort(fresh, request, key=_by_own_order)
        request.home, request.stamped = self, False

    def _remove(self, request: Request) -> None:
        """Take it out, its examined time its own again."""
        if request.stamped:
            part, at = self.stamped, bisect_left(self.stamped, _by_enqueue(request),
                                                 key=_by_enqueue)
            request.own_examined = self.stamp
        else:
            part, at = self.fresh, bisect_left(self.fresh, _by_own_order(request),
                                               key=_by_own_order)
        assert at < len(part) and part[at] is request, "the queue lost its order"
        del part[at]
        request.home, request.stamped = None, False

    def _settle(self) -> None:
        """Every request takes the account's stamp: fresh ones join `stamped`."""
        self.follows = True
        fresh, self.fresh = self.fresh, []
        for request in fresh:
            request.stamped = True
        if len(fresh) <= _FEW:
            for request in fresh:
                insort(self.stamped, request, key=_by_enqueue)
        else:
            self.stamped.extend(fresh)
            self.stamped.sort(key=_by_enqueue)  # two sorted runs: a merge, for timsort


class AccountQueue:
    """One account's shapes, filed by label, and the stamp its stamped requests share."""

    __slots__ = ("by_label", "exceptions", "id", "queue", "shapes", "size", "stamp",
                 "unlabelled")

    def __init__(self, queue: Queue, account_id: AccountId) -> None:
        self.queue = queue
        self.id = account_id
        self.stamp = float("-inf")
        self.shapes: dict[ShapeKey, Shape] = {}
        # Lists, not sets: a shape costs a pointer in each (the queue may hold 100k shapes).
        self.by_label: dict[str, list[Shape]] = {}
        self.unlabelled: list[Shape] = []
        # Shapes not all of whose requests carry `stamp`: with fresh requests, or frozen.
        self.exceptions: dict[Shape, None] = {}
        self.size = 0

    def compatible(self, labels: frozenset[str], indexed: bool) -> Iterator[Shape]:
        """Its shapes whose base labels a worker with `labels` has; `indexed`: look only
        under the worker's labels (worth it when shapes are many)."""
        if not indexed:
            for shape in self.shapes.values():
                if shape.base <= labels:
                    yield shape
            return
        yield from self.unlabelled
        by_label = self.by_label
        if len(by_label) < len(labels):
            buckets = [b for label, b in by_label.items() if label in labels]
        else:
            buckets = [b for label in labels if (b := by_label.get(label)) is not None]
        for bucket in buckets:
            for shape in bucket:
                if shape.base <= labels:
                    yield shape


class Queue(MutableMapping[ActionId, Request]):
    """Request id -> queued request, with every index kept in step on each change."""

    def __init__(self, requests: Iterable[Request] = ()) -> None:
        self._by_id: dict[ActionId, Request] = {}
        self.accounts: dict[AccountId, AccountQueue] = {}
        self.groups: dict[Group, list[Shape]] = {}  # fanout group -> its shapes
        self.zero_cpu = 0  # queued requests that reserve no CPU
        self._label_shapes: Counter[str] = Counter()  # shapes per base label
        for request in requests:
            self[request.id] = request

    # ---- the mapping ---------------------------------------------------------------------

    def __getitem__(self, request_id: ActionId) -> Request:
        return self._by_id[request_id]

    def get(self, request_id: ActionId, default: Request | None = None) -> Request | None:  # type: ignore[override]
        return self._by_id.get(request_id, default)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._by_id

    def __iter__(self) -> Iterator[ActionId]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def values(self) -> ValuesView[Request]:
        return self._by_id.values()

    def items(self) -> ItemsView[ActionId, Request]:
        return self._by_id.items()

    def __repr__(self) -> str:
        return f"Queue({list(self._by_id)!r})"

    def __setitem__(self, request_id: ActionId, request: Request) -> None:
        if request_id != request.id:
            raise KeyError(f"request {request.id!r} filed under {request_id!r}")
        if request_id in self._by_id:
            del self[request_id]
        if request.home is not None:
            raise ValueError(f"request {request.id!r} is queued elsewhere")
        self._by_id[request_id] = request
        account = self.accounts.get(request.account_id)
        if account is None:
            account = self.accounts[request.account_id] = AccountQueue(self, request.account_id)
        key: ShapeKey = (request.account_id, request.base_labels, request.provisionable_labels,
                         request.cpus, request.memory)
        shape = account.shapes.get(key)
        if shape is None:
            shape = self._new_shape(account, key, request)
        shape._add(request)
        account.exceptions[shape] = None
        account.size += 1
        if request.cpus <= EPSILON:
            self.zero_cpu += 1

    def __delitem__(self, request_id: ActionId) -> None:
        request = self._by_id.pop(request_id)
        shape = request.home
        assert isinstance(shape, Shape)
        shape._remove(request)
        account = shape.account
        account.size -= 1
        if request.cpus <= EPSILON:
            self.zero_cpu -= 1
        if len(shape) == 0:
            self._drop_shape(shape)
        if account.size == 0:
            del self.accounts[account.id]

    # ---- stamping --------------------------------------------------------------------------

    def stamp(self, account: AccountQueue, now: float, left_out: Iterable[Shape] = ()) -> None:
        """Every request of the account now has examined time `now`, but those of
        `left_out`, which keep theirs."""
        kept: dict[Shape, None] = dict.fromkeys(left_out)
        for shape in kept:
            if shape.follows:
                shape.frozen, shape.follows = account.stamp, False
                account.exceptions[shape] = None
        account.stamp = now
        for shape in list(account.exceptions):
            if shape not in kept:
                shape._settle()
                del account.exceptions[shape]

    def reexamine(self, request: Request, value: float) -> None:
        """Set a queued request's examined time (it moves in the order)."""
        shape = request.home
        assert isinstance(shape, Shape)
        shape._remove(request)
        request.own_examined = value
        shape._add(request)
        shape.account.exceptions[shape] = None

    # ---- internals ---------------------------------------------------------------------------

    def _new_shape(self, account: AccountQueue, key: ShapeKey, request: Request) -> Shape:
        # Filed under its rarest base label so far, so that a worker looking under its own
        # labels meets few shapes it cannot take (the choice never changes the result).
        counts = self._label_shapes
        label = min(request.base_labels, key=lambda b: (counts[b], b), default=None)
        shape = account.shapes[key] = Shape(account, key, fanout_group(request), label)
        counts.update(request.base_labels)
        if label is None:
            account.unlabelled.append(shape)
        else:
            account.by_label.setdefault(label, []).append(shape)
        self.groups.setdefault(shape.group, []).append(shape)
        return shape

    def _drop_shape(self, shape: Shape) -> None:
        account = shape.account
        del account.shapes[shape.key]
        account.exceptions.pop(shape, None)
        if shape.label is None:
            account.unlabelled.remove(shape)
        else:
            bucket = account.by_label[shape.label]
            bucket.remove(shape)
            if not bucket:
                del account.by_label[shape.label]
        counts = self._label_shapes
        for label in shape.base:
            counts[label] -= 1
            if not counts[label]:
                del counts[label]
        members = self.groups[shape.group]
        members.remove(shape)
        if not members:
            del self.groups[shape.group]
