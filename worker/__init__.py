"""kernel-lab's workers: the engine that trains (engine/), and the Celery app and task around it (app,
tasks, lease, progress). Imports flow one way: worker -> service."""
