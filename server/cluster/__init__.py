"""Many nodes, one population of users: the cluster on Redis (docs/scaling.md).

A node without ``cluster_url`` never imports anything here but the names below, and
behaves as a single process does.
"""

from server.cluster.errors import (
    CallTimeout,
    ClusterError,
    ClusterUnavailable,
    NodeGone,
    RemoteError,
)
from server.cluster.node import Cluster
from server.cluster.nodes import NodeInfo, read_nodes

__all__ = [
    "CallTimeout",
    "Cluster",
    "ClusterError",
    "ClusterUnavailable",
    "NodeGone",
    "NodeInfo",
    "RemoteError",
    "read_nodes",
]
