"""kernel-lab: what trains (the engine, later the Celery app and its tasks)."""
