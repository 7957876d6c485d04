"""Names the mesh's actors and Ray labels go by, shared by every part that looks them up."""

NAMESPACE = "actionmesh"
SCHEDULER = "actionmesh.scheduler"
RELAY = "actionmesh.relay"
GATEWAY = "actionmesh.gateway"
AGENT_PREFIX = "actionmesh.agent."

# Ray node labels under this key prefix steer the mesh and are not offered as action labels.
LABEL_PREFIX = "actionmesh/"
# `ray start --labels='{"actionmesh/agent": "off"}'` keeps a node out of the pool.
AGENT_OPT_OUT = "actionmesh/agent"
RAY_LABEL_PREFIX = "ray.io/"

# Resource that only the head node has; a tiny amount pins an actor there.
HEAD_RESOURCE = "node:__internal_head__"

# Set in every action's environment so its processes can be found again by their agent.
ENV_AGENT = "ACTIONMESH_AGENT"
ENV_ACTION = "ACTIONMESH_ACTION_ID"
ENV_ATTEMPT = "ACTIONMESH_ATTEMPT"
# Where `mesh up` finds the gateway's token when no token file is given.
ENV_GRPC_TOKEN = "ACTIONMESH_GRPC_TOKEN"


def on_the_head(name: str) -> dict[str, object]:
    """`.options(...)` shared by the mesh's singletons: named, detached (they outlive the
    driver that made them), found again rather than made twice, pinned to the head."""
    return {"name": name, "namespace": NAMESPACE, "lifetime": "detached",
            "get_if_exists": True, "resources": {HEAD_RESOURCE: 0.001}}


def agent_name(node_id: str) -> str:
    return AGENT_PREFIX + node_id
