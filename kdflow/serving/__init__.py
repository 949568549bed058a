"""``kdflow serve-model``: an HTTP scoring server for ``models:/<registry.student_name>@<serving.alias>``.

- :mod:`kdflow.serving.requests`: parsing and validating request bodies (MLflow's scoring protocol, late labels);
- :mod:`kdflow.serving.holder`: the served versions (champion, challenger) and the teacher, hot-swapped by a poller;
- :mod:`kdflow.serving.logbuffer`: the in-memory inference-log buffer, its flusher and the spill directory;
- :mod:`kdflow.serving.scorer`: one request scored (challenger split, confidence fallback, shadow sample, log rows);
- :mod:`kdflow.serving.http`: the ASGI app (Starlette/FastAPI) and its uvicorn runner.
"""
