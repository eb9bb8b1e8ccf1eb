"""The broker: the Celery configuration the CLI and the workers share, and the one client that talks to it.

JSON only: a message in any other format is refused, so nothing a user sends is ever unpickled.
The client publishes by task name through a bare Celery app, so it never imports the worker (torch).
Messages carry job ids only, and ids repeat across databases: each database's messages go to queues of
its own (`cpu.<identity>`, `gpu.<identity>`: routed), which only that database's workers consume.
"""
from __future__ import annotations

import json
import time
from base64 import b64decode
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from service import defaults
from service.errors import BadInput, BrokerUnavailable, mask, one_line
from service.settings import broker_password, one_at, settings

QUEUES = ("cpu", "gpu")
"""The queues users name (--queue, klab worker -Q); on the broker each is routed per database."""
TASK_TRAIN = "klab.train"
PRESENCE = "klab:presence"
"""Prefix of the keys a worker keeps alive on a Redis broker: {PRESENCE}:{identity}:{queue}:{hostname}."""

Task = tuple[str, list[int]]
"""A message: its queue and the ids of the jobs it carries."""


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
        "broker_transport_options": {"visibility_timeout": settings().visibility_timeout,
                                     "socket_timeout": defaults.BROKER_SOCKET_TIMEOUT_S},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        **_verified(broker_url),
    }


def _verified(broker_url: str) -> dict[str, Any]:
    """A rediss:// URL without ssl_* parameters verifies the server's certificate in the workers too: kombu then
    fell back to CERT_NONE ("insecure SSL behaviour") where klab's own reads (redis-py) required it. With ssl_*
    parameters, kombu reads them (and redis-py's default, required, where ssl_cert_reqs is not among them)."""
    if not broker_url.lower().startswith("rediss://") or "ssl_" in broker_url.partition("?")[2]:
        return {}
    import ssl

    return {"broker_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED}}


def client(broker_url: str | None = None):
    """A Celery app that only publishes (no tasks registered, no torch), one per broker: the settings' broker
    unless one is given (kept per URL, not per None: a test that moves KLAB_BROKER_URL, and clears the settings,
    publishes to the new broker, where the app of the old one once took its messages)."""
    return _client(broker_url or settings().broker_url)


@lru_cache(maxsize=4)
def _client(broker_url: str):
    from celery import Celery

    app = Celery("klab-client")
    app.conf.update(celery_config(broker_url))
    app.conf.task_publish_retry_policy = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2}
    return app


def routed(queue: str, identity: str) -> str:
    """The broker's name of a database's queue."""
    return f"{queue}.{identity}"


def unavailable(broker_url: str, exc: BaseException) -> BrokerUnavailable:
    """A broker's failure as one line: it could not be reached, or it answered with an error (a Redis that is
    full, read-only, ...; kombu raises its own error from Redis's)."""
    from redis.exceptions import ResponseError

    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ResponseError):
        cause = cause.__cause__ or cause.__context__
    what = "cannot reach the broker {}" if cause is None else "the broker {} refused"
    return BrokerUnavailable(f"{what.format(mask(broker_url))}: {one_line(exc)}")


SSL_PARAMETERS = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_cert_reqs")
"""What a rediss:// URL may set: files, a password and a word, which kombu (the workers) and redis-py (klab's own
looks at the broker) both read from the text as it is. Others redis-py's SSL connection takes are numbers, flags or
objects that kombu hands over as text (ssl_min_version=TLSv1_2: a TypeError in the worker)."""

CERT_REQS = ("none", "optional", "required")
"""ssl_cert_reqs as both read it (kombu also takes CERT_NONE..., which redis-py refuses)."""


def checked_url(broker_url: str | None = None) -> str:
    """The broker's URL, a Redis one that kombu and redis-py read alike, or one line naming KLAB_BROKER_URL (exit 2):
    kombu raised its own error from deep inside a worker or after a submission's jobs were stored."""
    broker_url = one_at("KLAB_BROKER_URL", broker_password(broker_url) if broker_url else settings().broker_url)
    scheme = broker_url.partition("://")[0].lower()
    if scheme not in ("redis", "rediss"):  # presence, holdings and stranded jobs are read in Redis itself
        raise BadInput("KLAB_BROKER_URL", f"the broker is Redis, reached over TCP (redis://HOST:PORT/N or "
                                          f"rediss://); got {mask(broker_url)!r}")  # kombu has no unix:// transport
    if "#" in broker_url:  # a fragment: kombu and redis-py would drop what follows, a password's rest too
        raise BadInput("KLAB_BROKER_URL", "the URL holds a #, which ends it: write a # of its password as %23")
    head, asked, tail = broker_url.partition("://")[2].partition("?")
    if asked and "@" not in head and "@" in tail.partition("/")[0] and "=" not in tail.partition("@")[0]:
        # a ? before the user part's @, not a parameter's value (rediss://h?ssl_ca_certs=ca@corp.pem): kombu and
        # redis-py end the host part at the ?, and read the rest, the password's, as parameters
        which = "password" if ":" in head else "user name"
        raise BadInput("KLAB_BROKER_URL", f"the {which} holds '?', which a URL's user part cannot hold: write it "
                                          "as %3F")
    try:
        parts = urlsplit(broker_url)
        _ = parts.port  # a port that is not a number raises
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        raise BadInput("KLAB_BROKER_URL", f"the host or port does not parse: {mask(broker_url)!r}") from None
    if [k for k, _ in query if k == "password"]:  # still there: settings() moves a lone one to the user part
        raise BadInput("KLAB_BROKER_URL", f"give one password, in the user part or as ?password=: "
                                          f"{mask(broker_url)!r}")
    ssl = SSL_PARAMETERS if scheme == "rediss" else ()  # redis:// took them too, and its connection raised
    if odd := sorted({k for k, _ in query if k not in ssl}):  # kombu hands them to redis-py's connection, which
        # raised TypeError at the send (a worker logged it every 10 s and never stopped)
        raise BadInput("KLAB_BROKER_URL", f"takes no parameter but ?password= and, with rediss://, "
                                          f"{', '.join(SSL_PARAMETERS)}; got {', '.join(odd)}")
    if bad := [v for k, v in query if k == "ssl_cert_reqs" and v not in CERT_REQS]:
        raise BadInput("KLAB_BROKER_URL", f"ssl_cert_reqs is one of {', '.join(CERT_REQS)}; got {bad[0]!r}")
    given = {k for k, v in query if v}
    if "ssl_keyfile" in given and "ssl_certfile" not in given:  # redis-py's load_cert_chain(None, key): "cannot
        # reach the broker" (exit 3), and a worker's traceback
        raise BadInput("KLAB_BROKER_URL", "ssl_keyfile is the key of a client certificate: give ssl_certfile too")
    number = parts.path[1:]
    if number and not (number.isascii() and number.isdigit()):  # kombu's int(): redis-py alone would use 0
        raise BadInput("KLAB_BROKER_URL", f"the Redis database after the host is a number, as in "
                                          f"redis://localhost:6379/0; got {mask(broker_url)!r}")
    return broker_url


def check(broker_url: str | None = None) -> None:
    """Fail fast, before anything is written, when the broker does not answer (or its URL is none: checked_url)."""
    broker_url = checked_url(broker_url)
    try:
        import redis

        conn = redis.Redis.from_url(broker_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            conn.ping()
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001 - any failure to reach it is the same one line
        raise unavailable(broker_url, exc) from None


def tasks(items: Sequence[tuple[int, tuple]], batch_jobs: int,
          most: Callable[[tuple], int] | None = None) -> list[Task]:
    """Job ids grouped by key (the queue first: jobs that may train together) into tasks of at most
    batch_jobs ids, and at most most(key) where given. Workers regroup what they are sent by what trains
    together, so a key of the queue alone is enough for jobs sent again."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for job_id, key in items:
        groups[key].append(job_id)
    out: list[Task] = []
    for key, ids in groups.items():
        size = batch_jobs if most is None else max(1, min(batch_jobs, most(key)))
        out += [(key[0], ids[i : i + size]) for i in range(0, len(ids), size)]
    return out


def shown(ids: Sequence[int]) -> str:
    """A task's arguments as Flower shows them: how many job ids, the first three and the last. Celery's own
    repr showed the first 1,024 characters' worth of ids, with no count, walking them item by item."""
    listed = ", ".join(map(str, ids[:3])) + (f", ..., {ids[-1]}" if len(ids) > 3 else "")
    return f"[{len(ids)} job id{'s' if len(ids) != 1 else ''}: {listed}]"


def publish(app, messages: Sequence[Task], identity: str, sent: Any = None, again: bool = False) -> int:
    """Send each task to its queue of the database `identity`; `sent(ids)` after each one the broker took; `again`:
    jobs sent before (a reaper's, `klab requeue --queued`), which the worker claims first, never trains as a quick
    task (worker.tasks). Returns how many jobs were sent.

    Stops at the first failure with BrokerUnavailable (the jobs of the tasks not sent are the caller's).
    """
    count = 0
    try:
        with app.producer_or_acquire() as producer:
            for queue, ids in messages:
                app.send_task(TASK_TRAIN, args=[ids], kwargs={"again": True} if again else {}, argsrepr=shown(ids),
                              kwargsrepr="{'again': True}" if again else "{}", queue=routed(queue, identity),
                              producer=producer)
                if sent is not None:
                    sent(ids)
                count += len(ids)
    except BrokerUnavailable:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("kombu", "redis", "amqp", "celery"):
            raise unavailable(app.conf.broker_url, exc) from None
        raise
    return count


@dataclass(frozen=True)
class Holdings:
    """What a Redis broker holds now: the queues with messages waiting, and the job ids of messages
    delivered to a worker less than `young` seconds ago and not yet acknowledged."""

    busy_queues: frozenset[str]
    delivered_ids: frozenset[int]


def holdings(app, young: float, identity: str) -> Holdings | None:
    """Look into a Redis broker (kombu's list per queue and its `unacked` hash) for the messages of database
    `identity`; None for other brokers.

    kombu's Redis transport moves a message from its queue to `unacked` in two steps (BRPOP, then a
    MULTI from the worker): a broker that dies between them loses the message, whatever its persistence.
    A message in `unacked` for longer than `young` belongs to a worker that dropped it when its
    connection broke, and Redis gives it back only after the visibility timeout.
    """
    with app.connection_for_read() as conn:
        if conn.transport.driver_type != "redis":
            return None
        conn.ensure_connection(max_retries=1, timeout=defaults.CONNECT_TIMEOUT_S)  # never hang: try at the next look
        channel = conn.default_channel
        redis = channel.client
        busy = frozenset(q for q in QUEUES if channel._size(routed(q, identity)))
        ours = {routed(q, identity) for q in QUEUES}
        since = dict(redis.zrange(channel.unacked_index_key, 0, -1, withscores=True))
        now = time.time()
        ids: set[int] = set()
        for tag, raw in redis.hgetall(channel.unacked_key).items():
            if now - since.get(tag, 0.0) < young:
                ids.update(_job_ids(raw, ours))
        return Holdings(busy, frozenset(ids))


def _job_ids(raw: bytes, queues: set[str]) -> list[int]:
    """The job ids a message in kombu's `unacked` hash carries, if it was sent to one of `queues`."""
    try:
        message, _exchange, queue = json.loads(raw)
        if queue not in queues:
            return []
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = b64decode(body)
        return carried(json.loads(body)[0])
    except (ValueError, KeyError, IndexError, TypeError):
        return []


def carried(args: Any) -> list[int]:
    """The job ids a klab.train task's arguments carry (its first: a list of ids), as the task reads them; none
    where they are not that (a message made by hand)."""
    if not isinstance(args, (list, tuple)) or not args or not isinstance(args[0], list):
        return []
    return [i for i in args[0] if isinstance(i, int) and not isinstance(i, bool)]


def announce(identity: str, queues: Sequence[str], hostname: str, seconds: int) -> None:
    """Say on a Redis broker that this worker consumes these queues of database `identity`, for `seconds`."""
    with redis_client() as r:
        if r is not None:
            for queue in queues:
                r.set(f"{PRESENCE}:{identity}:{queue}:{hostname}", "1", ex=seconds)


def withdraw(identity: str, queues: Sequence[str], hostname: str) -> None:
    with redis_client() as r:
        if r is not None:
            r.delete(*(f"{PRESENCE}:{identity}:{queue}:{hostname}" for queue in queues))


def consumers(identity: str, queue: str) -> int | None:
    """How many live workers consume `queue` of database `identity` (None: not a Redis broker)."""
    with redis_client() as r:
        if r is None:
            return None
        return sum(1 for _ in r.scan_iter(match=f"{PRESENCE}:{identity}:{queue}:*", count=1000))


def taken(node: str) -> bool:
    """Whether a live worker on this broker already goes by this node name (`name@host`), whatever database it
    serves: Celery's control commands and `klab workers` tell workers by it. Its presence says so and it answers a
    ping (a worker killed leaves its presence until it expires); a broker away or not Redis: not known, False."""
    try:
        with redis_client() as r:
            if r is None or not any(r.scan_iter(match=f"{PRESENCE}:*:*:{node}", count=1000)):
                return False
        return any(node in reply for reply in client().control.ping(destination=[node], timeout=1.0) or [])
    except Exception:  # noqa: BLE001 - the broker is away: the worker waits for it, as it would have
        return False


UNACKED = "unacked"
"""kombu's Redis hash of messages delivered and not yet acknowledged (its Channel.unacked_key, by default)."""


def holds_none(r: Any, identity: str) -> bool:
    """Whether Redis (a plain client: redis_client) holds no message of database `identity`, neither waiting in its
    queues nor delivered and not yet acknowledged: a worker acknowledges a task once it has ended
    (task_acks_late), so every task sent has then ended. What `--wait` asks between its reads of the database."""
    ours = {routed(q, identity) for q in QUEUES}
    return not any(r.llen(q) for q in ours) and not any(_job_ids(raw, ours) for raw in r.hvals(UNACKED))


@contextmanager
def redis_client() -> Iterator[Any]:
    """A plain client of the Redis broker, closed afterwards; a URL redis-py cannot read is one line naming
    KLAB_BROKER_URL (checked_url: `klab watch` raised redis-py's ValueError, a port's part of a password in it, and
    `REDIS://` was taken for another broker's, never asked)."""
    url = checked_url()
    import redis

    conn = redis.Redis.from_url(url, socket_connect_timeout=defaults.CONNECT_TIMEOUT_S,
                                socket_timeout=defaults.CONNECT_TIMEOUT_S)
    try:
        yield conn
    finally:
        conn.close()


def workers(timeout: float) -> list[dict[str, Any]]:
    """What every live worker says of itself (worker.app's klab_info), by name."""
    app = client()
    replies = app.control.broadcast("klab_info", reply=True, timeout=timeout) or []
    rows = [{"worker": host, **info} for reply in replies for host, info in reply.items() if isinstance(info, dict)]
    return sorted(rows, key=lambda r: r["worker"])
