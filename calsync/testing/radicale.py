"""A real Radicale CalDAV server in a folder, for tests, `make run` and benchmarks.

`RadicaleServer` writes a config (filesystem storage, plaintext htpasswd users, owner-only
rights), runs `python -m radicale` on a free port of 127.0.0.1 and waits until it answers.
The helpers create calendars (MKCALENDAR) and put or delete events over HTTP, the way a client
would; `seed_collection_files` writes .ics files straight into Radicale's storage, which is how
a benchmark loads 10,000 events in a second instead of a few minutes (Radicale rebuilds its
caches, `.Radicale.cache/`, from the files on the next request).

Run it by hand: `python -m calsync.testing.radicale --folder /tmp/dav --events 300` prints the
URL and credentials of a calendar filled with generated events and serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import quote
from xml.sax.saxutils import escape

import httpx

__all__ = [
    "RadicaleServer",
    "delete_event",
    "put_event",
    "seed_collection_files",
]


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RadicaleServer:
    """One Radicale process serving the storage under `folder` (context manager)."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_level: str = "warning",
        settings: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.host = host
        self._fixed_port = port
        self.port = port or 0
        self.log_level = log_level
        # Extra Radicale options by section, e.g. {"reporting": {"max_expand_occurrence": "0"}}.
        self.settings = {section: dict(values) for section, values in (settings or {}).items()}
        self._users: dict[str, str] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- configuration -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def storage_root(self) -> Path:
        """Radicale's `filesystem_folder` (holds `collection-root/<user>/<collection>/`)."""
        return self.folder / "collections"

    @property
    def log_path(self) -> Path:
        return self.folder / "radicale.log"

    def add_user(self, name: str, password: str) -> None:
        """Add a user to the htpasswd file (plaintext). Users added while running work too."""
        if ":" in name or "\n" in name or "\n" in password:
            raise ValueError("user names cannot hold ':' and neither field a newline")
        self._users[name] = password
        if self.folder.exists():
            self._write_users()

    def _write_users(self) -> None:
        text = "".join(f"{user}:{password}\n" for user, password in self._users.items())
        path = self.folder / "users"
        path.write_text(text)
        path.chmod(0o600)

    def _write_config(self) -> Path:
        sections: dict[str, dict[str, str]] = {
            "server": {"hosts": f"{self.host}:{self.port}", "max_connections": "32"},
            "auth": {
                "type": "htpasswd",
                "htpasswd_filename": str(self.folder / "users"),
                "htpasswd_encryption": "plain",
                "delay": "0",
            },
            "rights": {"type": "owner_only"},
            "storage": {"filesystem_folder": str(self.storage_root)},
            "web": {"type": "none"},
            "logging": {"level": self.log_level, "mask_passwords": "True"},
        }
        for section, values in self.settings.items():
            sections.setdefault(section, {}).update(values)
        path = self.folder / "config"
        path.write_text(
            "".join(
                f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()) + "\n"
                for section, values in sections.items()
            )
        )
        return path

    # -- process -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server process's pid while it runs (for benchmarks that account CPU)."""
        return self._process.pid if self.running and self._process is not None else None

    def start(self, timeout: float = 30.0) -> RadicaleServer:
        if self.running:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        self.storage_root.mkdir(exist_ok=True)
        self._write_users()
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            self.port = self._fixed_port or _free_port(self.host)
            config = self._write_config()
            self._log = self.log_path.open("ab")
            self._process = subprocess.Popen(
                [sys.executable, "-m", "radicale", "--config", str(config)],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            if self._wait_ready(timeout):
                return self
            self.stop()
            if attempt + 1 == attempts:
                break
        raise RuntimeError(f"Radicale did not start on {self.url}:\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self._process is not None
                if self._process.poll() is not None:
                    return False  # exited: port taken or bad config; the caller retries
                try:
                    client.request("OPTIONS", self.url)
                    return True
                except httpx.TransportError:
                    time.sleep(0.05)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, size: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> RadicaleServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- content -------------------------------------------------------------------------------

    def collection_url(self, user: str, slug: str) -> str:
        return f"{self.url}{quote(user)}/{quote(slug)}/"

    def create_calendar(
        self, user: str, password: str, slug: str, name: str, color: str | None = None
    ) -> str:
        """MKCALENDAR a VEVENT calendar for `user`; returns the collection URL."""
        url = self.collection_url(user, slug)
        color_prop = f"<I:calendar-color>{escape(color)}</I:calendar-color>" if color else ""
        body = f"""<?xml version="1.0" encoding="utf-8"?>
<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"
    xmlns:I="http://apple.com/ns/ical/">
  <D:set><D:prop>
    <D:displayname>{escape(name)}</D:displayname>{color_prop}
    <C:supported-calendar-component-set><C:comp name="VEVENT"/></C:supported-calendar-component-set>
  </D:prop></D:set>
</C:mkcalendar>"""
        response = httpx.request(
            "MKCALENDAR",
            url,
            content=body.encode(),
            headers={"Content-Type": "application/xml; charset=utf-8"},
            auth=(user, password),
            timeout=30.0,
        )
        if response.status_code != 201:
            raise RuntimeError(f"MKCALENDAR {url}: {response.status_code} {response.text[:500]}")
        return url

    def seed_collection_files(
        self,
        user: str,
        slug: str,
        ics_by_name: Mapping[str, str],
        *,
        name: str | None = None,
        color: str | None = None,
    ) -> str:
        """Write events straight into the storage; returns the collection URL."""
        seed_collection_files(self.storage_root, user, slug, ics_by_name, name=name, color=color)
        return self.collection_url(user, slug)


def put_event(
    collection_url: str,
    filename: str,
    ics_text: str,
    auth: tuple[str, str],
    *,
    if_match: str | None = None,
    if_none_match: bool = False,
) -> str | None:
    """PUT one calendar object; returns the new ETag (quotes stripped) when the server sent one."""
    headers = {"Content-Type": "text/calendar; charset=utf-8"}
    if if_match is not None:
        headers["If-Match"] = f'"{if_match}"' if not if_match.startswith('"') else if_match
    if if_none_match:
        headers["If-None-Match"] = "*"
    response = httpx.put(
        collection_url + quote(filename),
        content=ics_text.encode(),
        headers=headers,
        auth=auth,
        timeout=30.0,
    )
    if response.status_code not in (200, 201, 204):
        raise RuntimeError(f"PUT {filename}: {response.status_code} {response.text[:500]}")
    etag = response.headers.get("ETag")
    return etag.strip('"') if etag else None


def delete_event(
    collection_url: str,
    filename: str,
    auth: tuple[str, str],
    *,
    if_match: str | None = None,
) -> None:
    headers = {}
    if if_match is not None:
        headers["If-Match"] = f'"{if_match}"' if not if_match.startswith('"') else if_match
    response = httpx.delete(
        collection_url + quote(filename), headers=headers, auth=auth, timeout=30.0
    )
    if response.status_code not in (200, 204):
        raise RuntimeError(f"DELETE {filename}: {response.status_code} {response.text[:500]}")


def seed_collection_files(
    storage_root: str | os.PathLike[str],
    user: str,
    slug: str,
    ics_by_name: Mapping[str, str],
    *,
    name: str | None = None,
    color: str | None = None,
) -> Path:
    """Write calendar objects into Radicale's filesystem storage, creating the collection.

    Layout (Radicale 3 `multifilesystem`): `<storage_root>/collection-root/<user>/<slug>/`
    holds one file per object and `.Radicale.props`, the collection's properties as JSON,
    whose `tag` makes it a calendar. Radicale derives everything else (`.Radicale.cache/`:
    item cache, etag history, sync tokens) from the files, so nothing else is written here.
    Names must be plain file names without a leading dot (Radicale ignores the others).
    """
    for part in (user, slug, *ics_by_name):
        if not part or part.startswith(".") or "/" in part or part.endswith("~"):
            raise ValueError(f"not a name Radicale stores: {part!r}")
    collection = Path(storage_root) / "collection-root" / user / slug
    collection.mkdir(parents=True, exist_ok=True)
    props_path = collection / ".Radicale.props"
    props: dict[str, str] = {}
    if props_path.exists():
        props = json.loads(props_path.read_text())
    props.update(
        {
            "tag": "VCALENDAR",
            "C:supported-calendar-component-set": "VEVENT",
            "D:displayname": name or props.get("D:displayname") or slug,
        }
    )
    if color:
        props["ICAL:calendar-color"] = color
    props_path.write_text(json.dumps(props, sort_keys=True))
    for filename, text in ics_by_name.items():
        (collection / filename).write_text(text, encoding="utf-8", newline="")
    return collection


def main(argv: list[str] | None = None) -> int:
    from calsync.testing.icalgen import generate_events

    parser = argparse.ArgumentParser(
        prog="python -m calsync.testing.radicale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--folder", help="storage and config folder (default: a temporary one)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user", default="demo")
    parser.add_argument("--password", default="demo")
    parser.add_argument("--calendar", default="work")
    parser.add_argument("--events", type=int, default=300, help="generated events to load")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="calsync-radicale-"))
    server = RadicaleServer(folder, port=args.port or None)
    server.add_user(args.user, args.password)
    if args.events:
        server.seed_collection_files(
            args.user,
            args.calendar,
            generate_events(args.events, seed=args.seed),
            name=args.calendar.title(),
            color="#1e88e5",
        )
    with server:
        print(f"Radicale at {server.url} (storage {folder})", flush=True)
        print(f"calendar: {server.collection_url(args.user, args.calendar)}", flush=True)
        print(f"user {args.user!r}, password {args.password!r}; Ctrl-C stops", flush=True)
        try:
            while server.running:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
