"""kernel-lab's service: everything a user touches, and nothing that trains.

    jobs/     what a job is: spec, inputs, problem, sweep, selection, status, the result schema
    db/       the database: schema (tables), connect (driver, reads), engine (SQLAlchemy, writes), reads, writes
    broker    the one Celery client and the configuration workers share
    submit    validate, store, then hand jobs to the broker
    render/   a result as text, terminal tables, exports, plots
    cli/      the `klab` commands: thin click layers over the above
    settings, defaults, errors

The rule (checked by import-linter, see pyproject.toml): nothing under service/ but service/cli imports
torch or worker; imports flow one way, worker -> service, and the CLI reaches the engine only to train.
"""
