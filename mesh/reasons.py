"""User-visible reasons for waiting, refusal, loss and endings: the one place their words live."""

# Attempt and action endings.
EXITED_NONZERO = "exited with code {code}"
OUT_OF_MEMORY = "out of memory (limit {limit}); {how}"
STATUS_LOST = "its exit status was lost (the process that started it died first)"
LOST_AGENT = "agent {agent} was lost"
LOST_BUDGET_SPENT = "lost {n} times with its agents; no retries left"
QUARANTINED = ("quarantined: lost with {n} different agents in a row ({agents}); it may be "
               "what kills them")
RETRY_AFTER_FAILURE = "retrying after failure {n} of {budget}"
RETRY_AFTER_LOSS = "requeued after losing agent {agent} (loss {n} of {budget})"
CANCELLED_BY_USER = "cancelled by request"
CANCELLED_BEFORE_START = "cancelled before its agent started it"
SPEC_UNREADABLE = "its saved spec cannot be read: {error}"
SUPERSEDED = "attempt {attempt} was superseded by attempt {current}"
PREEMPTED = "preempted by action {by} (account {account}, priority {priority})"
GIVEN_UP = "attempt {attempt} was already given up as lost"
UNKNOWN_ATTEMPT = "the scheduler has no such action"
WITHDRAWN = ("taken back from agent {agent}, where it waited {waited:.2f}s for a slot held "
             "by a longer attempt; queued again")
NOT_HELD = ("requeued: the scheduler restarted and agent {agent} does not have this attempt "
            "(its start never arrived)")

# Why an agent left the pool, or a start did not happen.
NODE_DEAD = "its node is dead"
ACTOR_DIED = "its actor died"
CALL_FAILED = "a call to it failed: actor died"
AGENT_LEFT = "agent left before the start"
START_NOT_SENT = "could not send the start: {error}"
START_REFUSED = "agent refused the start: {error}"
MESH_DOWN = "the mesh was brought down"

# The event log's words for what is not a stage change.
DEMOTED = "demoted from priority {old} to {new} (account {account})"
PROMOTED = "promoted from priority {old} to {new} (account {account})"
AGENT_JOINED = "{host}: {cpus:g} CPUs, {memory_gib:.1f} GiB, labels [{labels}]"
AGENT_REJOINED = "registered again ({host})"
AGENT_SUSPECT = "it does not answer; its work stays placed until it is found dead"
AGENT_BACK = "it answers again"
POOL_APPLIED = "pool config applied: {groups} group(s), {assignments} manual assignment(s)"
GROUP_BLOCKED = "group {group} blocked by an operator: no new work there"
GROUP_UNBLOCKED = "group {group} unblocked by an operator"
DISPATCHED = "{jobs} job(s) assigned over {groups} open group(s); {moved} moved"
RESTARTED = "took back {actions} unfinished action(s) and {accounts} account(s)"

# Waiting.
NO_AGENTS = "no agents in the pool yet; waiting for one to join"
UNPLACEABLE = "unplaceable: {detail}"
WAITING = "waiting: {detail}"
PINNED_GROUP = "job `{job}` is pinned to group `{group}`: {there}"
PREFERRED_GROUP = ("job `{job}` prefers group `{group}` (warm): there, {there}; elsewhere, "
                   "{elsewhere}")

# What an account's quota says about a waiting action.
QUOTA_NO_ACCOUNT = "no account: it runs in the free bucket when no paid work needs the room"
QUOTA_PAID = "account {account} pays for it at priority {priority}"
QUOTA_FREE = "account {account} is out of quota: it waits in the free bucket"
QUOTA_NO_FREE = ("account {account} is out of quota and may not run free: it waits until "
                 "the account earns a positive balance")
QUOTA_FANOUT = ("account {account} is at its fanout limit ({limit}) for these labels: "
                "it runs in the free bucket")
QUOTA_LABEL_LIMIT = ("account {account} is at its per-label limit on every agent with the "
                     "labels")

# Placement checks, by name.
CHECK_ALIVE = "alive"
CHECK_OPEN = "open"
CHECK_LABELS = "labels"
CHECK_CPU = "cpu"
CHECK_MEMORY = "memory"
CHECK_LOAD = "load"
