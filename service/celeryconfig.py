"""The Celery configuration shared by the CLI (which only publishes) and the workers (which train).

JSON only: a message in any other format is refused, so nothing a user sends is ever unpickled.
"""
from __future__ import annotations

from typing import Any

from service import defaults

QUEUES = ("cpu", "gpu")
TASK_TRAIN = "klab.train"


def celery_config(broker_url: str) -> dict[str, Any]:
    return {
        "broker_url": broker_url,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": "cpu",
        "task_create_missing_queues": True,
        "broker_transport_options": {"visibility_timeout": defaults.visibility_timeout()},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }
