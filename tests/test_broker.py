"""What goes over the broker (service/broker.py) and how workers are started (service/cli/workers.py): real
messages read off a real Redis, real worker processes."""
from __future__ import annotations

import io
import json
import math
import os
import subprocess

import pytest
from harness import Process, body, klab, klab_path, messages, queue_key, service_env, sweep_id_of, tails, wait_until

from service import defaults
from service.errors import BadInput
from service.jobs.problem import fitting, together

pytestmark = pytest.mark.timeout(240)


def test_messages_carry_job_ids_only_grouped_by_batch_jobs(tmp_path, pg_db, redis_server):
    url, db = pg_db
    server = redis_server()
    env = service_env(tmp_path, url, server.url())
    client = server.client()
    default = defaults.BATCH_JOBS
    assert default == 4096  # the README's number
    big = ("--input", "random:1024x1024", "--kernel", "d2l", "--epochs", "10")
    fit = fitting(together(*_built(dict(zip(big[::2], big[1::2])))))  # 11 such jobs fit in 2 GiB together
    assert 1 < fit < 25
    for args, size, per_task in ((("--seed", "0..9999"), 10_000, default),
                                 (("--seed", "0..249", "--batch-jobs", "100"), 250, 100),
                                 ((*big, "--seed", "0..24"), 25, fit)):
        client.flushdb()
        out = klab(env, "sweep", *args, "--json")
        assert out.returncode == 0, out.stderr
        ids = json.loads(out.stdout)["ids"]
        sent = messages(client, queue_key(url))
        assert len(sent) == math.ceil(size / per_task)
        carried = []
        for m in sent:
            assert m["headers"]["task"] == "klab.train" and m["content-type"] == "application/json"
            args_, kwargs, _embed = body(m)
            assert kwargs == {} and len(args_) == 1 and all(type(i) is int for i in args_[0])
            assert len(args_[0]) <= per_task
            listed = ", ".join(map(str, args_[0][:3])) + (f", ..., {args_[0][-1]}" if len(args_[0]) > 3 else "")
            assert m["headers"]["argsrepr"] == f"[{len(args_[0])} job ids: {listed}]"  # what Flower shows
            carried += args_[0]
        assert carried == ids == sorted(ids)  # every job once, nothing but ids, sent in the order of the sweep
        seeds = db.rows("SELECT seed FROM jobs WHERE sweep_id = :s ORDER BY id", s=sweep_id_of(out))
        assert [r.seed for r in seeds] == list(range(size))  # 10,000: three chunks stored over several connections
        assert [len(body(m)[0][0]) for m in sent][:-1] == [per_task] * (len(sent) - 1)


def test_a_sweep_over_two_input_files_stored_over_several_connections_keeps_each_array_once(tmp_path, pg_db,
                                                                                            redis_server):
    """10,000 jobs of two .npy inputs: the second input first appears in the second chunk of 4,096, which another
    connection stores, as the third, at once. Each array is stored once, before a job refers to it, and every
    job names its own."""
    import numpy as np

    url, db = pg_db
    env = service_env(tmp_path, url, redis_server().url())
    inputs = {name: np.arange(48, dtype=np.float32).reshape(6, 8) * k for k, name in ((1, "a"), (2, "b"))}
    for name, array in inputs.items():
        np.save(tmp_path / f"{name}.npy", array)
    files = ",".join(f"npy:{tmp_path / name}.npy" for name in inputs)
    out = klab(env, "sweep", "--input", files, "--seed", "0..4999", "--json")
    sweep = sweep_id_of(out)
    assert db.scalar("SELECT count(*) FROM datasets") == 2
    rows = db.rows("SELECT j.input, j.seed, d.data FROM jobs j JOIN datasets d ON d.id = j.input_dataset_id "
                   "WHERE j.sweep_id = :s ORDER BY j.id", s=sweep)
    names = [r.input.rsplit("/", 1)[-1].removesuffix(".npy") for r in rows]
    assert list(zip(names, (r.seed for r in rows))) == [(n, s) for n in inputs for s in range(5000)]
    for name, r in list(zip(names, rows))[::4999]:
        assert np.array_equal(np.load(io.BytesIO(r.data), allow_pickle=False), inputs[name]), name


def _built(values: dict[str, str]) -> tuple:
    from service.jobs.problem import build_problem
    from service.jobs.spec import JobSpec

    spec = JobSpec.parse({k.removeprefix("--").replace("-", "_"): v for k, v in values.items()})
    return build_problem(spec, {}), spec


def test_klab_worker_gives_its_children_the_users_torch_threads_else_the_cores_split():
    from service.cli.workers import worker_argv

    cores = os.cpu_count() or 1
    assert worker_argv("cpu", 1, "INFO")[1] == {"KLAB_TORCH_THREADS": str(cores)}
    assert worker_argv("cpu", 1, "INFO", threads=1)[1] == {"KLAB_TORCH_THREADS": "1"}  # was the split, whatever set
    assert worker_argv("gpu", None, "INFO", threads=3)[1] == {}
    # more children than cores: one thread each, never 0 (which the children's settings refuse)
    assert worker_argv("cpu", cores + 1, "INFO")[1] == {"KLAB_TORCH_THREADS": "1"}


def test_a_worker_name_of_64_characters_is_one():
    from service.cli.workers import NAME

    assert NAME.fullmatch("g" * 64) and NAME.fullmatch("g-1.x_" + "9" * 58)
    assert not NAME.fullmatch("g" * 65) and not NAME.fullmatch("-g") and not NAME.fullmatch("gpu@2")


def test_klab_worker_itself_hands_its_children_the_users_torch_threads(klab_db, redis_url, setenv, klab_cli,
                                                                      monkeypatch):
    """What `klab worker` starts Celery with (the tests' workers are started by the harness, which sets the threads
    alike: `klab worker` passing none of the user's passed every test)."""
    seen: dict[str, object] = {}

    def execvp(file: str, args: list[str]) -> None:
        seen.update(argv=list(args), threads=os.environ.get("KLAB_TORCH_THREADS"))
        raise SystemExit(0)

    monkeypatch.setattr(os, "execvp", execvp)
    setenv(KLAB_BROKER_URL=redis_url, KLAB_TORCH_THREADS="3")
    code, _, err = klab_cli("worker", "--concurrency", "1", "--name", "threads")
    assert (code, err) == (0, ""), err
    argv = seen["argv"]
    assert seen["threads"] == "3" and argv[argv.index("--concurrency") + 1] == "1", seen
    assert argv[argv.index("--hostname") + 1] == "threads@%h"


def test_log_spaced_values_are_exact(tmp_path):
    from service.jobs.sweep import grid

    g = grid({"lr": "0.001:0.1:3", "epochs": "10:1000:3", "noise": "0.5:0.5:1"})
    assert g.swept["lr"] == [0.001, 0.01, 0.1]
    assert g.swept["epochs"] == [10, 100, 1000]
    assert g.fixed["noise"] == 0.5
    # whole numbers past 2**53 end where they are asked to: they were [1, 9007199254740986], [1, 3037000500,
    # 9223372036854745088], and two ends 1 apart were refused as rounding to one whole number
    assert grid({"seed": "1:9007199254740993:2"}).swept["seed"] == [1, 2**53 + 1]
    assert grid({"seed": f"1:{2**63 - 1}:3"}).swept["seed"] == [1, 3037000500, 2**63 - 1]
    assert grid({"seed": "10000000000000000:10000000000000001:2"}).swept["seed"] == [10**16, 10**16 + 1]
    assert grid({"seed": "1:5:1"}).fixed["seed"] == 1 and grid({"epochs": "1:10:1"}).fixed["epochs"] == 1  # one value
    with pytest.raises(BadInput, match="round to 2 whole numbers"):  # exp put the middle one past the end: not taken
        grid({"seed": f"{2**62}:{2**62 + 2}:3"})


def test_no_kernel_in_any_case_and_a_made_input_whatever_its_zeros_are_one_value_of_a_sweep():
    from service.jobs.sweep import grid

    for text in ("none,None", "none, NONE "):  # were two jobs alike
        with pytest.raises(BadInput, match="^kernel: .* appears more than once in .*; give each value once$"):
            grid({"kernel": text})
    for field, text in (("input", "edge:6x8,edge:06x8"), ("input", "image:a.png, image:a.png:gray"),
                        ("kernel", "random:2x2,random:02x2")):  # were two jobs alike
        with pytest.raises(BadInput, match=f"^{field}: .* appears more than once in .*; give each value once$"):
            grid({field: text})
    made = grid({"input": "edge:06x8,random:2x03", "kernel": "random:01x2"})
    assert made.params() == {"swept": {"input": ["edge:6x8", "random:2x3"]}, "fixed": {"kernel": "random:1x2"}}
    assert [job["input"] for job in made.jobs()] == ["edge:06x8", "random:2x03"]  # as typed, for its messages
    assert grid({"lr": "1e-4:1:5"}).swept["lr"] == [0.0001, 0.001, 0.01, 0.1, 1.0]
    assert grid({"lr": "0.002:0.2:5"}).swept["lr"] == [0.002, 0.00632455532034, 0.02, 0.0632455532034, 0.2]


def test_whole_numbers_are_read_exactly_past_what_a_float_holds():
    """A seed goes to 2**63 - 1; a float keeps whole numbers exactly only up to 2**53."""
    from service.jobs.sweep import grid

    big = 2**53 + 1
    assert grid({"seed": f"{big}"}).fixed["seed"] == big
    assert grid({"seed": f"{big}..{big + 2}"}).swept["seed"] == [big, big + 1, big + 2]  # was 5 seeds from 2**53
    assert grid({"seed": f"{big},{big - 1}"}).swept["seed"] == [big, big - 1]  # were one seed "given twice"
    assert grid({"seed": f"{2**63 - 1}"}).fixed["seed"] == 2**63 - 1  # was 2**63: "less than 2**63"
    assert grid({"epochs": "10.0", "seed": "1e3"}).fixed == {"epochs": 10, "seed": 1000}  # as before


def test_klab_worker_splits_the_cores_and_its_children_use_that_many_torch_threads(tmp_path, pg_db, redis_server,
                                                                                    worker_procs):
    from service.cli.workers import worker_argv

    cores = os.cpu_count() or 1
    argv, extra = worker_argv("cpu", None, "INFO")
    assert argv[argv.index("--concurrency") + 1] == str(cores) and extra == {"KLAB_TORCH_THREADS": "1"}
    assert worker_argv("cpu", 1, "INFO")[1] == {"KLAB_TORCH_THREADS": str(cores)}
    gpu, gpu_env = worker_argv("gpu", None, "INFO")
    assert gpu[gpu.index("--pool") + 1] == "solo" and "KLAB_TORCH_THREADS" not in gpu_env
    assert gpu[gpu.index("--hostname") + 1] == "gpu@%h"  # named after its queue, unless --name says otherwise
    second, _ = worker_argv("gpu", None, "INFO", "gpu-2")
    assert second[second.index("--hostname") + 1] == "gpu-2@%h"
    assert worker_argv("cpu", 1, "warning")[0][-2:] == ["--loglevel", "WARNING"]  # as the help's choices spell it
    # the children apply what they are given: two pool processes, three threads each
    url, _ = pg_db
    env = service_env(tmp_path, url, redis_server().url(), KLAB_TORCH_THREADS="3")  # not 1, nor this machine's split
    w = worker_procs(env, "split", concurrency=2).wait_ready()
    frozen_line = "objects left out of the cycle collector's walks in this pool process"  # logged by each child
    # after its threads' line: waiting for the threads' lines alone read the second child's before it was written
    wait_until(lambda: w.text().count("torch threads in this pool process: ") == 2
               and w.text().count(frozen_line) == 2, 60, tails(w))
    threads = {line.split("torch threads in this pool process: ")[1].split()[0]
               for line in w.text().splitlines() if "torch threads in this pool process" in line}
    assert threads == {"3"}
    # and each froze what the imports made before the fork (torch among them), out of the collector's walks
    frozen = [int(line.rsplit(": ", 1)[1]) for line in w.text().splitlines() if frozen_line in line]
    assert len(frozen) == 2 and min(frozen) > 100_000, frozen


def test_klab_worker_refuses_the_name_of_a_live_worker_and_not_of_a_killed_one(tmp_path, pg_db, redis_server,
                                                                             worker_procs, setenv):
    """Two `klab worker` on one host without --name were both cpu@host: `klab workers` listed the name twice, and
    the first to stop withdrew the other's presence. A name a live worker has is refused; a killed worker's
    presence, left until it expires, does not keep its name from a worker started in its place."""
    import socket

    from service import broker

    url, _ = pg_db
    redis = redis_server().url()
    env = service_env(tmp_path, url, redis)
    first = worker_procs(env, "twin").wait_ready()
    out = klab(env, "worker", "--name", "twin", timeout=60)
    node = f"twin@{socket.gethostname()}"
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (f"klab: error: name: a worker named {node} is already running on this broker; give each "
                          "worker on a host its own --name\n")
    setenv(KLAB_BROKER_URL=redis, KLAB_DATABASE_URL=url)
    assert broker.taken(node) and not broker.taken(f"other@{socket.gethostname()}")
    first.kill()
    with broker.redis_client() as r:
        assert any(r.scan_iter(match=f"{broker.PRESENCE}:*:*:{node}"))  # still there, for PRESENCE_SECONDS
    assert not broker.taken(node)


def test_the_plain_celery_command_stops_on_a_database_setting_that_is_bad_input(tmp_path, redis_server):
    """KLAB_HOME a file, or an in-memory SQLite URL: Celery logged the BadInput's traceback, consumed the bare cpu
    queue (no database's) and said it was ready; `klab worker` refused it in one line."""
    import subprocess
    import sys

    from harness import clean_env

    from service.cli.workers import worker_argv

    (tmp_path / "afile").write_text("")
    argv, extra = worker_argv("cpu", 1, "INFO", "bad")
    for home, url in ((tmp_path / "afile", None), (tmp_path / "home", "sqlite://")):
        env = {**clean_env(home, url, KLAB_BROKER_URL=redis_server().url()), **extra}
        out = subprocess.run([sys.executable, "-m", *argv], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and " ready." not in out.stderr, out.stderr[-2000:]  # as klab worker exits
        assert "klab worker: " in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_klab_worker_starts_in_a_folder_holding_modules_named_as_klabs_own(tmp_path, redis_server):
    """`python -m celery -A worker.app` puts the current folder first on sys.path: in a project with a worker.py of
    its own `klab worker` said "The module worker.app was not found", with a service.py "'service' is not a
    package"; a celery.py would have been taken for Celery."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("worker", "service", "celery"):
        (project / f"{name}.py").write_text(f'raise SystemExit("the folder\'s own {name}.py was imported")\n')
    env = service_env(tmp_path, f"sqlite:///{tmp_path / 'k.db'}", redis_server().url(),
                      KLAB_TORCH_THREADS="1")  # as harness.WorkerProcess: the suite shares the cores
    started = Process([klab_path(), "worker", "--queue", "cpu", "--concurrency", "1", "--name", "shadowed"], env,
                      tmp_path / "worker.log", cwd=project)
    try:
        started.wait_ready()
        assert "was imported" not in started.text()
        done = subprocess.run([klab_path(), "sweep", "--seed", "1,2", "--epochs", "2", "--wait"], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0 and "2 succeeded" in done.stderr + done.stdout, done.stderr[-2000:]
    finally:
        started.stop()


def test_redis_ssl_parameters_are_taken_only_with_rediss_and_only_those_redis_py_takes(setenv):
    """redis:// with ?ssl_cert_reqs=none, or rediss:// with ?ssl_bogus=1, passed the check: the CLI failed 'cannot
    reach the broker' (exit 3), and a worker logged a TypeError every 10 s and never stopped."""
    from service.broker import checked_url

    for url, odd in (("redis://h:6379/0?ssl_cert_reqs=none", "ssl_cert_reqs"), ("rediss://h:6379/0?ssl_bogus=1",
                                                                                "ssl_bogus"),
                     ("rediss://h:6379/0?ssl_min_version=TLSv1_2", "ssl_min_version")):  # kombu hands it over as
        # text: a TypeError in the worker
        with pytest.raises(BadInput, match=f"^KLAB_BROKER_URL: takes no parameter but .*; got {odd}$"):
            checked_url(url)
    with pytest.raises(BadInput, match="^KLAB_BROKER_URL: ssl_cert_reqs is one of none, optional, required; got "
                                       "'CERT_NONE'$"):  # kombu's word, which redis-py refuses
        checked_url("rediss://h:6379/0?ssl_cert_reqs=CERT_NONE")
    good = "rediss://h:6380/0?ssl_cert_reqs=none&ssl_ca_certs=/etc/ca.pem"
    assert checked_url(good) == good
    for url, said in (("rediss://h:6379/0?ssl_cert_reqs=Required", "ssl_cert_reqs is one of none, optional, required; "
                                                                    "got 'Required'"),  # redis-py's are lower case
                      ("redis://h:notaport/0", "the host or port does not parse: 'redis://h:notaport/0'"),
                      ("redis://h:6379/0#x", "the URL holds a #, which ends it: write a # of its password as %23"),
                      ("redis://h:6379/0?password=p#x", "the URL holds a #, which ends it: write a # of its password "
                                                        "as %23"),
                      ("redis://:a@h:6379/10?password=b", "give one password, in the user part or as ?password=: "
                                                          "'redis://:***@h:6379/10?password=***'")):
        with pytest.raises(BadInput) as refused:
            checked_url(url)
        assert str(refused.value) == f"KLAB_BROKER_URL: {said}", url


def test_flower_shows_a_tasks_count_of_ids_in_words():
    from service.broker import shown

    assert shown([5]) == "[1 job id: 5]" and shown([5, 6]) == "[2 job ids: 5, 6]"
    assert shown(list(range(1, 6))) == "[5 job ids: 1, 2, 3, ..., 5]"


def test_a_workers_presence_lasts_its_seconds_and_is_withdrawn_from_every_queue(redis_url, setenv):
    import redis

    from service.broker import PRESENCE, announce, consumers, withdraw

    setenv(KLAB_BROKER_URL=redis_url)
    announce("db1", ["cpu", "gpu"], "w@h", 30)
    r = redis.Redis.from_url(redis_url)
    try:
        assert [0 < r.ttl(f"{PRESENCE}:db1:{q}:w@h") <= 30 for q in ("cpu", "gpu")] == [True, True]  # it expires
        assert (consumers("db1", "cpu"), consumers("db1", "gpu")) == (1, 1)
        withdraw("db1", ["cpu", "gpu"], "w@h")
        assert (consumers("db1", "cpu"), consumers("db1", "gpu")) == (0, 0)
    finally:
        r.close()


def test_a_client_key_without_its_certificate_is_a_mistake_in_the_url(tmp_path):
    """rediss:// with ssl_keyfile but no ssl_certfile: redis-py's load_cert_chain(None, key) said "cannot reach
    the broker ... certfile should be a valid filesystem path" (exit 3), and `klab worker` ended in a traceback."""
    from service.broker import checked_url

    for url in ("rediss://h:6380/0?ssl_keyfile=/k.pem", "rediss://h:6380/0?ssl_keyfile=/k.pem&ssl_certfile="):
        with pytest.raises(BadInput, match="^KLAB_BROKER_URL: ssl_keyfile is the key of a client certificate: give "
                                           "ssl_certfile too$"):
            checked_url(url)
    for url in ("rediss://h:6380/0?ssl_certfile=/c.pem", "rediss://h:6380/0?ssl_certfile=/c.pem&ssl_keyfile=/k.pem"):
        assert checked_url(url) == url  # a certificate file may hold its key
    from harness import clean_env

    env = clean_env(tmp_path / "home", KLAB_BROKER_URL="rediss://127.0.0.1:1/0?ssl_keyfile=/k.pem")
    for argv in (["submit", "--input", "edge:6x8"], ["worker", "--queue", "cpu"]):
        out = klab(env, *argv)
        assert (out.returncode, out.stderr.splitlines()) == (2, [
            "klab: error: KLAB_BROKER_URL: ssl_keyfile is the key of a client certificate: give ssl_certfile too"]), out
    assert not (tmp_path / "home").exists() or not list((tmp_path / "home").rglob("*.db"))  # nothing written


def test_a_rediss_url_without_ssl_parameters_verifies_the_certificate_in_the_workers_too():
    """kombu fell back to CERT_NONE for a bare rediss:// URL ("insecure SSL behaviour"), where klab's own reads of
    the broker (redis-py) required the certificate."""
    import ssl

    from celery import Celery

    from service.broker import celery_config

    def ssl_of(url: str):
        app = Celery()
        app.conf.update(celery_config(url))
        return app.connection_for_write().ssl

    assert ssl_of("rediss://h:6380/0") == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert ssl_of("rediss://h:6380/0?ssl_cert_reqs=none") == {"ssl_cert_reqs": ssl.CERT_NONE}  # as the URL says
    assert ssl_of("rediss://h:6380/0?ssl_ca_certs=/ca.pem") == {"ssl_ca_certs": "/ca.pem"}  # redis-py's default
    assert not ssl_of("redis://h:6379/0")


def test_klab_worker_gpu_index_sets_the_visible_device(tmp_path, pg_db, redis_server):
    """`klab worker --queue gpu --gpu 3`: the worker sees only GPU 3 (CUDA_VISIBLE_DEVICES). Without a GPU it
    then refuses to start, naming what it saw; with one, 3 is a device it cannot see either (no machine here has
    four), so it refuses too: either way the variable reached the worker."""
    url, _ = pg_db
    env = service_env(tmp_path, url, redis_server().url())
    out = klab(env, "worker", "--queue", "gpu", "--gpu", "3", timeout=120)
    assert out.returncode == 2  # said before Celery starts (its banner, exit code 1, came first)
    assert out.stderr.startswith("klab: error: queue: the gpu queue needs a GPU") and len(out.stderr.splitlines()) == 1
    assert "CUDA_VISIBLE_DEVICES='3'" in out.stderr and out.stdout == ""
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = klab(env, "worker", "--queue", "gpu", timeout=120)
    assert out.returncode == 2 and out.stderr.rstrip().endswith(", CUDA_VISIBLE_DEVICES unset)"), out.stderr  # was
    # CUDA_VISIBLE_DEVICES=None, as if set to that text


def test_run_no_store_leaves_the_database_untouched(tmp_path, pg_url):
    from harness import clean_env

    lite = tmp_path / "never.db"
    for url in (f"sqlite:///{lite}", pg_url):  # the PostgreSQL one has no schema at all: it is never read
        out = klab(clean_env(tmp_path / "home", url), "run", "--epochs", "3", "--no-store", "--json")
        assert out.returncode == 0, out.stderr
        assert "id" not in json.loads(out.stdout) and json.loads(out.stdout)["status"] == "succeeded"
    assert not lite.exists() and not (tmp_path / "home").exists()
    from harness import Db

    db = Db(pg_url)
    try:
        assert db.scalar("SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = 'public'") == 0
    finally:
        db.close()


def test_a_submission_makes_its_jobs_with_the_cycle_collector_paused_and_leaves_it_as_it_was(tmp_path, pg_db,
                                                                                              redis_server, setenv,
                                                                                              monkeypatch):
    """20,000 jobs allocate enough to start some 200 collections (215 before the pause; bench/RESULTS.md: a fifth of
    the CLI's CPU on 100,000); none runs while they are made, stored and sent, and the collector is on again
    afterwards, also after a requeue and after a mistake inside the pause."""
    import gc

    import klab
    from service import submit as submitting
    from service.jobs.selection import Selection

    url, db = pg_db
    env = service_env(tmp_path, url, redis_server().url())
    setenv(**{k: env[k] for k in ("KLAB_DATABASE_URL", "KLAB_BROKER_URL", "KLAB_HOME")})
    collections: list[int] = []
    during: list[tuple[bool, int]] = []

    def seen(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    def observed(*args):
        before = len(collections)
        try:
            return real(*args)
        finally:
            during.append((gc.isenabled(), len(collections) - before))

    real = submitting._submit
    monkeypatch.setattr(submitting, "_submit", observed)
    assert gc.isenabled()
    gc.callbacks.append(seen)
    try:
        with pytest.warns(klab.NoWorker):  # no worker here: the jobs stay queued, as the test wants them
            handle = klab.sweep(input="edge:6x8", kernel="d2l", epochs=2, seed=range(20_000))
        assert during == [(False, 0)] and gc.isenabled()
        assert db.scalar("SELECT count(*) FROM jobs WHERE status = 'queued'") == len(handle.ids) == 20_000
        many = len(collections)
        gc.collect()
        assert len(collections) == many + 1  # the callback sees collections: none ran inside
        submitting.requeue(Selection(sweep=handle.sweep), True, 4096)
        assert gc.isenabled()
        with pytest.raises(ZeroDivisionError), submitting.cycles_uncollected():
            assert not gc.isenabled()
            1 / 0  # noqa: B018
        assert gc.isenabled()
        gc.disable()
        with submitting.cycles_uncollected():
            pass
        assert not gc.isenabled()  # left as it was found
    finally:
        gc.enable()
        gc.callbacks.remove(seen)



def test_a_process_whose_broker_moves_publishes_to_the_new_one(klab_db, klab_cli, setenv, redis_server):
    """The same process submits to one broker, then, KLAB_BROKER_URL moved and the settings read anew (as every
    test that starts a broker of its own does), to another: the second sweep's message goes to the second broker.
    The client app was cached for "the settings' broker", and published to the first one's port: a test that
    came after another in one process stored its jobs, found that broker gone and left them created."""
    servers = [redis_server(), redis_server()]
    for server in servers:
        setenv(KLAB_BROKER_URL=server.url())
        code, out, err = klab_cli("sweep", "--seed", "0..2", "--epochs", "1", "--json")
        assert code == 0, err
    sent = [[body(m)[0][0] for m in messages(server.client(), queue_key(klab_db))] for server in servers]
    assert sent == [[[1, 2, 3]], [[4, 5, 6]]]


def test_a_sweeps_bias_and_tol_are_numbers_in_its_params_as_every_other_number():
    """They were stored as text ('0.5'), beside noise 0.1 and epochs 2 as numbers."""
    from service.jobs.sweep import grid

    g = grid({"bias": "0.5", "tol": "1e-3", "noise": "0.1", "seed": "1,2"})
    assert g.fixed == {"bias": 0.5, "tol": 0.001, "noise": 0.1} and g.swept == {"seed": [1, 2]}
    assert grid({"bias": "none", "tol": "x"}).fixed == {"bias": "none", "tol": "x"}  # for the job's spec to name


def test_klab_workers_names_ten_active_jobs_and_counts_past_them():
    from service.cli.workers import worker_line

    row = {"worker": "cpu@h", "queues": ["cpu"], "database": "sqlite:///k.db", "device": "cpu", "pool": "prefork"}
    assert worker_line({**row, "active_jobs": []}).endswith("pool prefork  active jobs -")
    ten = "active jobs 1, 2, 3, 4, 5, 6, 7, 8, 9, 10"
    assert worker_line({**row, "active_jobs": list(range(1, 11))}).endswith(ten)
    assert worker_line({**row, "active_jobs": list(range(1, 12))}).endswith(ten + ", ... (11 in all)")
    assert worker_line({**row, "database": "x\ny", "active_jobs": [3]}) == ("cpu@h  queues cpu  database x\\ny  device "
                                                                            "cpu  pool prefork  active jobs 3")
