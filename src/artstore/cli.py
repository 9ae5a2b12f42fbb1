"""The ``artstore`` command: ``serve`` runs the service under gunicorn.

Failures are mapped to exit statuses here, in one place.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__, auth
from .errors import ConfigError
from .registry import Registry
from .settings import Settings, config_path, load, write_embedded_default

EMBEDDED_DIR = "artstore-data"


def resolve_settings(config: str | None, data_dir: str) -> tuple[Settings, bool]:
    """Settings from ``--config``/``$ARTSTORE_CONFIG``/``/etc``, else the embedded default."""
    path = config_path(config, {})
    embedded = config is None and not path.exists()
    if embedded:
        path = write_embedded_default(Path(data_dir))
    return load(path), embedded


def run_gunicorn(app_factory: Any, options: dict[str, Any]) -> None:
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app_factory()

    Server().run()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="artstore")
def main() -> None:
    """artstore: publish what CI builds; nginx serves it."""


@main.command()
@click.option("--config", "config", envvar="ARTSTORE_CONFIG", default=None,
              help="Path of artstore.json (default: /etc/artstore/artstore.json, else an "
                   "embedded default under --data).")
@click.option("--data", "data_dir", default=EMBEDDED_DIR, show_default=True,
              help="Folder of the embedded default, used when there is no configuration.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option("--workers", default=2, show_default=True, type=int,
              help="gunicorn worker processes.")
def serve(config: str | None, data_dir: str, host: str, port: int, workers: int) -> None:
    """Run the service (gunicorn, several workers)."""
    from .api import create_site

    try:
        settings, embedded = resolve_settings(config, data_dir)
        auth.ensure_admin_token(settings.state_dir)
        Registry(settings.state_dir).load()  # a broken projects.json stops us here, once
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    where = f"http://{host}:{port}"
    api = f"{where}/artstore/" if settings.serve_files else f"{where}/"
    source = ("$" + auth.ADMIN_ENV if os.environ.get(auth.ADMIN_ENV)
              else settings.state_dir / "admin.token")
    click.echo(f"artstore {__version__}: {'embedded default in ' if embedded else ''}"
               f"{settings.state_dir}", err=True)
    click.echo(f"  API:   {api}", err=True)
    if settings.serve_files:
        click.echo(f"  files: {where}/  (from {settings.base_path})", err=True)
    click.echo(f"  admin token: from {source}", err=True)
    run_gunicorn(lambda: create_site(settings), {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": 4,
        # gthread workers keep beating while a long upload runs, so this only ends
        # workers that are really stuck.
        "timeout": 120,
        "graceful_timeout": 30,
        "accesslog": "-",
        "errorlog": "-",
    })


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
