"""gunicorn's settings for the portal, the API and the boot service (README: everyday commands):

    .venv/bin/gunicorn -c webapp/gunicorn.conf.py webapp.wsgi

Flags given after ``-c`` override these (``--bind 0.0.0.0:8000``, ``--workers 8``), as does GUNICORN_CMD_ARGS.
``manage.py runserver`` is for development only: one process, and a listen backlog of 10 that drops
connections beyond it (of 200 PXE clients booting at once, 18 to 162 got no answer).
"""

import os

bind = ["127.0.0.1:8000"]
# Two processes per core: the load benchmark's best for the API (bench/api_load.py), whose work is
# CPU-bound Python between database calls.
workers = 2 * (os.cpu_count() or 1)
# Threads, so that a slow client (a deploy kernel or initrd fetched over a busy provisioning network) or a
# request waiting on a database lock holds up one thread, not a whole process. Each thread has its own
# database connection: PostgreSQL's max_connections must exceed workers x threads on every web host.
worker_class = "gthread"
threads = 4
# Connections waiting to be accepted. A rack of servers PXE-booting at once opens hundreds within a
# second; the kernel caps this at net.core.somaxconn (4096 on current kernels).
backlog = 2048
# Long-lived processes keep their PostgreSQL connections between requests (webapp/settings.py says why).
os.environ.setdefault("NEOCLOUD_DB_CONN_MAX_AGE", "300")
