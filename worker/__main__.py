"""`python -P -m worker ARGS`: celery's own command line (`celery ARGS`), as `klab worker` runs it.

Celery imports the app `-A` names with the current folder first on sys.path, so in a folder holding a worker.py,
service.py or celery.py of the user's own, `python -m celery -A worker.app worker` imported that instead ("The
module worker.app was not found"; "'service' is not a package"). Here the app is imported first, from where klab is
installed (`-P`: the current folder is not on sys.path), and celery finds it imported."""
if __name__ == "__main__":
    from celery.__main__ import main

    import worker.app  # noqa: F401 - before celery looks for it

    main()
