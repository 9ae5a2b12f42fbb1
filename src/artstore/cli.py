"""The ``artstore`` command: ``serve`` runs the service under gunicorn; the other commands
are the client (``push``, ``project``, ``item``, ``rollback``, ``token``).

This module only parses arguments and prints; the calls live in ``client.py``. Failures
are mapped to exit statuses here, in one place (``exit_status``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

import click

from . import __version__, auth
from .catalog import ITEM_TYPES
from .client import ArtstoreClient, ClientError, UsageError, check_names, ci_metadata
from .errors import ConfigError
from .settings import Settings, config_path, load, write_embedded_default

EMBEDDED_DIR = "artstore-data"

# Exit statuses a CI script can branch on; the README's table is checked against this.
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5
EXIT_REFUSED = 6
EXIT_SERVER = 7
EXIT_NO_CONNECTION = 8
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_USAGE: "usage error",
    EXIT_AUTH: "authentication or permission (HTTP 401, 403)",
    EXIT_NOT_FOUND: "not found (HTTP 404)",
    EXIT_CONFLICT: "conflict (HTTP 409)",
    EXIT_REFUSED: "input refused (HTTP 400, 411, 413, 415, 422)",
    EXIT_SERVER: "server error or unexpected answer (HTTP 5xx)",
    EXIT_NO_CONNECTION: "cannot connect, or no answer",
}


def exit_status(error: ClientError) -> int:
    """The one mapping from a failed call to an exit status."""
    status = error.status
    if isinstance(error, UsageError):
        return EXIT_USAGE
    if status is None:
        return EXIT_NO_CONNECTION
    if status in (401, 403):
        return EXIT_AUTH
    if status == 404:
        return EXIT_NOT_FOUND
    if status == 409:
        return EXIT_CONFLICT
    if 400 <= status < 500:
        return EXIT_REFUSED
    return EXIT_SERVER


JSON_FLAG = "artstore.json"  # in ctx.meta: the command was given --json


def error_json(error: ClientError) -> dict[str, Any]:
    """A failure for ``--json``: ``{"error": {"status", "message", ...the problem fields}}``."""
    return {"error": {"status": error.status, "message": error.message,
                      **{k: v for k, v in error.problem.items() if k not in ("status",
                                                                             "message")}}}


class Main(click.Group):
    """Turns a ClientError raised by any subcommand into a message and an exit status.

    The message goes to stderr; with ``--json`` the error is also printed on stdout as
    JSON, so a script reading stdout always gets a document.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            if ctx.meta.get(JSON_FLAG):
                print_json(error_json(exc))
            raise click.UsageError(exc.message) from None
        except ClientError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            if ctx.meta.get(JSON_FLAG):
                print_json(error_json(exc))
            ctx.exit(exit_status(exc))
        except click.ClickException as exc:  # a bad argument, once --json was seen
            if ctx.meta.get(JSON_FLAG):
                print_json({"error": {"status": None, "message": exc.format_message()}})
            raise


def resolve_settings(config: str | None, data_dir: str) -> tuple[Settings, bool]:
    """Settings from ``--config``/``$ARTSTORE_CONFIG``/``/etc``, else the embedded default."""
    path = config_path(config, {})
    embedded = config is None and not path.exists()
    if embedded:
        path = write_embedded_default(Path(data_dir))
    return load(path), embedded


# Settings that only some supported gunicorn versions have; the others go without them.
OPTIONAL_GUNICORN_SETTINGS = {"control_socket_disable"}


def run_gunicorn(app_factory: Any, options: dict[str, Any]) -> None:
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings or key not in OPTIONAL_GUNICORN_SETTINGS:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return app_factory()

    Server().run()


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
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
    from .store import open_catalog

    try:
        settings, embedded = resolve_settings(config, data_dir)
        auth.ensure_admin_token(settings.state_dir)
        # A broken projects.json, or a catalog database out of reach, stops us here, once;
        # a database is migrated here too, before the workers start.
        open_catalog(settings).close()
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
        # gunicorn 27's control socket lives in $HOME/.gunicorn/ by default, where a
        # second instance on the host would take it over; nothing here uses it.
        "control_socket_disable": True,
    })


# ------------------------------------------------------------------ the client


def json_flag(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ctx.meta[JSON_FLAG] = value  # for Main, which prints errors
    return value


def api_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--url``, ``--token`` and ``--json``, shared by every client command."""
    command = click.option("--json", "as_json", is_flag=True, is_eager=True,
                           callback=json_flag,
                           help="Print the server's JSON answer (or error), for "
                                "scripts.")(command)
    command = click.option("--token", envvar="ARTSTORE_TOKEN", show_envvar=True,
                           help="Bearer token: the admin token or a project token.")(command)
    return click.option("--url", envvar="ARTSTORE_URL", show_envvar=True, required=True,
                        help="The API root, e.g. https://ci.example.com/artstore.")(command)


def connect(url: str, token: str | None) -> ArtstoreClient:
    return ArtstoreClient(url, token)


def print_json(body: Any) -> None:
    click.echo(json.dumps(body, indent=2))


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class ProgressBar:
    """One line on a terminal, redrawn at most ten times a second."""

    WIDTH = 30

    def __init__(self, stream: TextIO, label: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.label = label
        self.clock = clock
        self.start = clock()
        self.drawn = 0.0
        self.shown = False

    def __call__(self, done: int, total: int | None) -> None:
        now = self.clock()
        if now - self.drawn < 0.1 and done != total:
            return
        self.drawn = now
        rate = human_size(done / max(now - self.start, 1e-3))
        if total:
            filled = self.WIDTH * done // total
            line = (f"{self.label} [{'#' * filled}{'-' * (self.WIDTH - filled)}] "
                    f"{100 * done // total:3d}% {human_size(done)} of {human_size(total)}, "
                    f"{rate}/s")
        else:
            line = f"{self.label} {human_size(done)}, {rate}/s"
        self.stream.write(f"\r{line}\x1b[K")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def target_argument(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, str]:
    project, sep, item = value.partition("/")
    if not sep or not project or not item or "/" in item:
        raise click.BadParameter(f"expected PROJECT/ITEM, not {value!r}")
    try:
        check_names(project, item)
    except UsageError as exc:
        raise click.BadParameter(exc.message) from None
    return project, item


def name_argument(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        check_names(value)
    except UsageError as exc:
        raise click.BadParameter(exc.message) from None
    return value


def meta_option(ctx: click.Context, param: click.Parameter,
                values: tuple[str, ...]) -> dict[str, str]:
    metadata = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, not {value!r}")
        metadata[key] = text
    return metadata


@main.command()
@click.argument("target", metavar="PROJECT/ITEM", callback=target_argument)
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--meta", "-m", "metadata", multiple=True, metavar="KEY=VALUE",
              callback=meta_option,
              help="Metadata stored with the upload (repeatable); overrides the commit, branch "
                   "and pipeline picked up from GitHub Actions, GitLab CI or Jenkins.")
@api_options
def push(target: tuple[str, str], path: Path, metadata: dict[str, str], url: str,
         token: str | None, as_json: bool) -> None:
    """Publish PATH to PROJECT/ITEM and print its URL.

    A file is sent as it is. A directory is packed on the fly into a tar.gz or a zip,
    for tgz and zip items. Uploads are never retried.
    """
    project, item = target
    bar = ProgressBar(sys.stderr, f"{project}/{item}") if sys.stderr.isatty() else None
    try:
        with connect(url, token) as client:
            pushed = client.push(project, item, path, {**ci_metadata(os.environ), **metadata},
                                 bar)
    finally:
        if bar is not None:
            bar.close()
    answer = pushed.answer
    if as_json:
        print_json(answer)
        return
    for warning in answer.get("warnings") or []:
        click.echo(f"warning: {warning}", err=True)
    if pushed.kind == "collection":
        # A collection's "release" is the file's name, its "files" the collection's count.
        what = (f"file {answer['release']} ({answer['files']} "
                f"file{'' if answer['files'] == 1 else 's'} in the collection)")
    else:
        what = f"release {answer['release']}: {answer['files']} file(s)"
    click.echo(f"published {project}/{item} {what}, {human_size(answer['size'])}, "
               f"sha256 {answer['sha256']}", err=True)
    click.echo(answer["url"])


# ---- projects


class ItemSpec(click.ParamType):
    """``name=type[:keep|depth]``, e.g. ``docs=tgz:5`` or ``builds=collection:20``."""

    name = "NAME=TYPE[:N]"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, dict[str, Any]]:
        name, sep, rest = str(value).partition("=")
        kind, _, number = rest.partition(":")
        if not sep or not name or kind not in ITEM_TYPES:
            self.fail(f"expected NAME=TYPE[:N] with TYPE one of {', '.join(ITEM_TYPES)}, "
                      f"not {value!r}", param, ctx)
        conf: dict[str, Any] = {"type": kind}
        if number:
            if not number.isdigit():
                self.fail(f"{number!r} in {value!r} is not a number", param, ctx)
            conf["depth" if kind == "collection" else "keep"] = int(number)
        return name, conf


def read_config_file(ctx: click.Context, param: click.Parameter,
                     value: Path | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        config = json.loads(value.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"cannot read {value}: {exc}") from None
    if not isinstance(config, dict):
        raise click.BadParameter(f"{value} must hold a JSON object like "
                                 '{"items": {"docs": {"type": "tgz"}}}')
    return config


def config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--description", help="The project's description.")(command)
    command = click.option(
        "--file", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
        callback=read_config_file,
        help='The configuration as JSON, as in the API: {"items": {"docs": {"type": "tgz"}}}.'
    )(command)
    return click.option(
        "--item", "items", multiple=True, type=ItemSpec(),
        help="An item, e.g. docs=tgz:5 (keep 5 releases), report=html, "
             "builds=collection:20 (keep 20 files); repeatable.")(command)


def apply_options(config: dict[str, Any], items: tuple[tuple[str, dict[str, Any]], ...],
                  description: str | None) -> dict[str, Any]:
    config = {**config, "items": {**config.get("items", {}), **dict(items)}}
    if description is not None:
        config["description"] = description
    return config


def print_project(body: dict[str, Any]) -> None:
    title = body["name"] + (f": {body['description']}" if body.get("description") else "")
    click.echo(title)
    for name, item in body["items"].items():
        limit = (f"depth {item['depth']}" if item["type"] == "collection"
                 else f"keep {item['keep']}")
        click.echo(f"  {name:<20} {item['type']:<10} {limit:<9} "
                   f"last publish {item.get('last_publish') or '-'}")


@main.group("project")
def project_group() -> None:
    """List, show, create, update and delete projects (changes need the admin token)."""


@project_group.command("list")
@api_options
def project_list(url: str, token: str | None, as_json: bool) -> None:
    """List the projects."""
    with connect(url, token) as client:
        projects = client.list_projects()
    if as_json:
        print_json({"projects": projects})
        return
    for entry in projects:
        click.echo(f"{entry['name']:<24} {', '.join(entry['items']) or '(no items)'}")


@project_group.command("show")
@click.argument("name", callback=name_argument)
@api_options
def project_show(name: str, url: str, token: str | None, as_json: bool) -> None:
    """Show a project's items and when each was last published."""
    with connect(url, token) as client:
        body = client.get_project(name)
    if as_json:
        print_json(body)
    else:
        print_project(body)


@project_group.command("create")
@click.argument("name", callback=name_argument)
@config_options
@api_options
def project_create(name: str, items: tuple[tuple[str, dict[str, Any]], ...],
                   config_file: dict[str, Any] | None, description: str | None, url: str,
                   token: str | None, as_json: bool) -> None:
    """Create a project from --item options and/or --file."""
    config = apply_options(config_file or {}, items, description)
    with connect(url, token) as client:
        body = client.create_project(name, config)
    if as_json:
        print_json(body)
    else:
        print_project(body)


@project_group.command("update")
@click.argument("name", callback=name_argument)
@config_options
@click.option("--remove-item", "removed", multiple=True, metavar="NAME",
              help="Remove an item (needs --prune: its files are deleted); repeatable.")
@click.option("--prune", is_flag=True,
              help="Allow removing items or changing their type, deleting their files.")
@api_options
def project_update(name: str, items: tuple[tuple[str, dict[str, Any]], ...],
                   config_file: dict[str, Any] | None, description: str | None,
                   removed: tuple[str, ...], prune: bool, url: str, token: str | None,
                   as_json: bool) -> None:
    """Change a project's configuration.

    Starts from --file if given, else from the project's current configuration, then
    applies --item, --remove-item and --description. Lowering keep or depth prunes at once.
    """
    with connect(url, token) as client:
        if config_file is None:
            current = client.get_project(name)
            config_file = {"description": current["description"], "items": {
                item: {k: v for k, v in conf.items() if k in ("type", "keep", "depth")}
                for item, conf in current["items"].items()}}
        config = apply_options(config_file, items, description)
        unknown = sorted(set(removed) - set(config["items"]))
        if unknown:
            raise click.BadParameter(f"project {name!r} has no item {unknown[0]!r}",
                                     param_hint="--remove-item")
        config["items"] = {k: v for k, v in config["items"].items() if k not in removed}
        body = client.update_project(name, config, prune=prune)
    if as_json:
        print_json(body)
    else:
        print_project(body)


@project_group.command("delete")
@click.argument("name", callback=name_argument)
@click.option("--yes", is_flag=True, help="Do not ask: delete the project, its files and tokens.")
@api_options
def project_delete(name: str, yes: bool, url: str, token: str | None, as_json: bool) -> None:
    """Delete a project with all its published files and tokens."""
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError(f"deleting {name!r} removes all its files and tokens; "
                                   "add --yes")
        click.confirm(f"Delete project {name!r} with all its files and tokens?", abort=True)
    with connect(url, token) as client:
        client.delete_project(name)
    if as_json:
        print_json({"project": name, "deleted": True})
    else:
        click.echo(f"deleted project {name}", err=True)


# ---- items, rollback


def print_item(project_name: str, body: dict[str, Any]) -> None:
    if body["type"] == "collection":
        click.echo(f"{project_name}/{body['name']} (collection, depth {body['depth']}): "
                   f"{body.get('url', '')}")
        for f in body["files"]:
            click.echo(f"  {f['name']:<32} {human_size(f['size']):>10}  {f['created']}  "
                       f"sha256 {f['sha256'][:12]}")
        return
    click.echo(f"{project_name}/{body['name']} ({body['type']}, keep {body['keep']}): "
               f"{body.get('url', '')}")
    for r in body["releases"]:
        live = "*" if r["release"] == body["live"] else " "
        meta = " ".join(f"{k}={v}" for k, v in (r.get("metadata") or {}).items())
        click.echo(f"{live} {r['release']}  {r['created']}  {r['files']} file(s)  "
                   f"{human_size(r['size'])}  {meta}".rstrip())


@main.group("item")
def item_group() -> None:
    """Look at an item's releases or a collection's files; delete a collection file."""


@item_group.command("show")
@click.argument("target", metavar="PROJECT/ITEM", callback=target_argument)
@api_options
def item_show(target: tuple[str, str], url: str, token: str | None, as_json: bool) -> None:
    """Show an item's releases (* marks the live one) or a collection's files."""
    with connect(url, token) as client:
        body = client.get_item(*target)
    if as_json:
        print_json(body)
    else:
        print_item(target[0], body)


@item_group.command("delete-file")
@click.argument("target", metavar="PROJECT/ITEM", callback=target_argument)
@click.argument("filename", metavar="FILENAME")
@api_options
def item_delete_file(target: tuple[str, str], filename: str, url: str, token: str | None,
                     as_json: bool) -> None:
    """Remove FILENAME from a collection (a file of that name can then be pushed again)."""
    with connect(url, token) as client:
        client.delete_file(*target, filename)
    if as_json:
        print_json({"project": target[0], "item": target[1], "file": filename,
                    "deleted": True})
    else:
        click.echo(f"deleted {target[0]}/{target[1]} file {filename}", err=True)


@main.command()
@click.argument("target", metavar="PROJECT/ITEM", callback=target_argument)
@click.option("--release", metavar="ID", help="The kept release to make live "
                                              "(default: the one before the live one).")
@api_options
def rollback(target: tuple[str, str], release: str | None, url: str, token: str | None,
             as_json: bool) -> None:
    """Make a kept release of an html, tgz or zip item live again."""
    with connect(url, token) as client:
        body = client.rollback(*target, release)
    if as_json:
        print_json(body)
        return
    click.echo(f"{target[0]}/{target[1]}: release {body['live']} is live", err=True)
    click.echo(body.get("url", ""))


# ---- tokens


@main.group("token")
def token_group() -> None:
    """Create, list and revoke a project's tokens (needs the admin token)."""


@token_group.command("create")
@click.argument("project_name", metavar="PROJECT", callback=name_argument)
@api_options
def token_create(project_name: str, url: str, token: str | None, as_json: bool) -> None:
    """Create a token that may publish to PROJECT; it is shown only this once."""
    with connect(url, token) as client:
        body = client.create_token(project_name)
    if as_json:
        print_json(body)
        return
    click.echo(f"token {body['id']} for project {project_name} (shown only now):", err=True)
    click.echo(body["token"])


@token_group.command("list")
@click.argument("project_name", metavar="PROJECT", callback=name_argument)
@api_options
def token_list(project_name: str, url: str, token: str | None, as_json: bool) -> None:
    """List a project's token ids and creation dates (never the tokens)."""
    with connect(url, token) as client:
        tokens = client.list_tokens(project_name)
    if as_json:
        print_json({"tokens": tokens})
        return
    for entry in tokens:
        click.echo(f"{entry['id']}  {entry['created']}")


@token_group.command("revoke")
@click.argument("project_name", metavar="PROJECT", callback=name_argument)
@click.argument("token_id", metavar="ID")
@api_options
def token_revoke(project_name: str, token_id: str, url: str, token: str | None,
                 as_json: bool) -> None:
    """Revoke one of a project's tokens."""
    with connect(url, token) as client:
        client.revoke_token(project_name, token_id)
    if as_json:
        print_json({"project": project_name, "id": token_id, "revoked": True})
    else:
        click.echo(f"revoked token {token_id} of project {project_name}", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
