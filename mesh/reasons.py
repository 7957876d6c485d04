"""User-visible reasons for waiting, refusal, loss and endings: the one place their words live."""

# Attempt and action endings.
EXITED_NONZERO = "exited with code {code}"
LOST_AGENT = "agent {agent} was lost"
LOST_BUDGET_SPENT = "lost {n} times with its agents; no retries left"
RETRY_AFTER_FAILURE = "retrying after failure {n} of {budget}"
RETRY_AFTER_LOSS = "requeued after losing agent {agent} (loss {n} of {budget})"
CANCELLED_BY_USER = "cancelled by request"
CANCELLED_BEFORE_START = "cancelled before its agent started it"
SUPERSEDED = "attempt {attempt} was superseded by attempt {current}"
GIVEN_UP = "attempt {attempt} was already given up as lost"

# Why an agent left the pool, or a start did not happen.
NODE_DEAD = "its node is dead"
ACTOR_DIED = "its actor died"
CALL_FAILED = "a call to it failed: actor died"
AGENT_LEFT = "agent left before the start"
START_NOT_SENT = "could not send the start: {error}"
START_REFUSED = "agent refused the start: {error}"

# Waiting.
NO_AGENTS = "no agents in the pool yet; waiting for one to join"
UNPLACEABLE = "unplaceable: {detail}"
WAITING = "waiting: {detail}"

# Placement checks, by name.
CHECK_ALIVE = "alive"
CHECK_OPEN = "open"
CHECK_LABELS = "labels"
CHECK_CPU = "cpu"
CHECK_MEMORY = "memory"
CHECK_LOAD = "load"
