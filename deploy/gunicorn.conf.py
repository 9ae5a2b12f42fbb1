"""gunicorn settings for running artstore in production, behind nginx.

    gunicorn -c deploy/gunicorn.conf.py 'artstore.api:app_from_config()'

``artstore.json`` comes from ``$ARTSTORE_CONFIG``, else ``/etc/artstore/artstore.json``.
``$GUNICORN_BIND`` sets the address, ``$WEB_CONCURRENCY`` the number of workers; options
on the command line or in ``$GUNICORN_CMD_ARGS`` override anything set here.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Any

from gunicorn import glogging

# Loopback: nginx on the same host is the only client. The image sets 0.0.0.0:8080.
bind = [os.environ.get("GUNICORN_BIND", "127.0.0.1:8080")]
workers = int(os.environ.get("WEB_CONCURRENCY", 2 * (os.cpu_count() or 1) + 1))
# Threaded workers: the arbiter's heartbeat runs beside the requests, so a multi-GB upload
# that takes an hour is not mistaken for a hung worker, as it would be with the sync worker.
worker_class = "gthread"
threads = 4
# Only a worker whose main loop is stuck this long is restarted; requests have no limit
# here, nginx's proxy timeouts bound them.
timeout = 120
# On a restart, in-flight uploads get this long to finish; one cut short publishes nothing.
graceful_timeout = 120
keepalive = 5
# Heartbeat files on tmpfs: on a container's overlay filesystem they can stall the workers.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# Peers allowed to set X-Forwarded-Proto (gunicorn's own scheme handling). The app's
# ProxyFix, enabled by trusted_proxies in artstore.json, reads the X-Forwarded-* headers.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Recent gunicorn opens a management socket in $HOME: several instances on one host would
# share it, and the image's user has no home. Versions without it ignore this name.
control_socket_disable = True

accesslog = "-"  # stdout, one JSON object a line
errorlog = "-"  # stderr, one JSON object a line
loglevel = "info"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: easy for a log shipper, no parsing of free text."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        access = getattr(record, "access", None)
        if access is not None:
            entry.update(access)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class JsonLogger(glogging.Logger):
    """gunicorn's logger, writing access and error lines (and the app's log) as JSON."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers + self.access_log.handlers:
            handler.setFormatter(JsonFormatter())
        app_log = logging.getLogger("artstore")
        app_log.handlers = list(self.error_log.handlers)
        app_log.setLevel(logging.INFO)
        app_log.propagate = False

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.cfg.accesslog:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        headers = dict((k.lower(), v) for k, v in (resp.headers or []))
        # REMOTE_ADDR and SCRIPT_NAME as the app saw them: ProxyFix has put the client's
        # address and nginx's /artstore prefix there.
        self.access_log.info("access", extra={"access": {
            "remote": environ.get("REMOTE_ADDR"),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
            "query": environ.get("QUERY_STRING", ""),
            "status": int(status),
            "bytes_sent": getattr(resp, "sent", None),
            "body_bytes": int(environ.get("CONTENT_LENGTH") or 0) or None,
            "duration_s": round(request_time.total_seconds(), 6),
            "request_id": headers.get("x-request-id"),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "pid": os.getpid(),
        }})


logger_class = JsonLogger
