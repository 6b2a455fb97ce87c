"""pmstore's service layer: the `pmstore` command line and the REST service.

cli.py / cli_remote.py (commands), settings.py (PMSTORE_* settings), app.py (create_app,
the front door, FastAPI routes), objects.py (the object hot path), errors.py (status
mapping, the one error shape), metrics.py (Prometheus), client.py (httpx clients).
"""
