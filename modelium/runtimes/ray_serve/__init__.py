"""Ray Serve runtime: each model is one Serve app on a private (or joined) Ray cluster.

Importing this package does not import ray; :meth:`RayServeManager.start` does, after
setting the environment Ray must see to stay on loopback.
"""

from modelium.runtimes.ray_serve.manager import RayServeManager, deployment_name
from modelium.runtimes.ray_serve.signature import folder_signature

__all__ = ["RayServeManager", "deployment_name", "folder_signature"]
