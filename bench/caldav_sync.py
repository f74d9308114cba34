"""CalDAV sync against a real Radicale calendar of 10,000 events, beside vdirsyncer and the server.

The headline figure is the initial sync as users run it: a local control plane (`calsync
devcluster`'s binaries) with the CRDs, one long-running `calsync run` on the shipped defaults
(only what a user must set: the kubeconfig, a SQLite store URL under a temporary folder, free
ports, private addresses allowed for the loopback Radicale; no batch size or other tuning), and
per round `kubectl apply` of a fresh Namespace, a labelled credentials Secret and a
CalendarConnection on the collection URL, timed from the start of `kubectl apply` until the
connection reads Ready with `status.eventCount` equal to the calendar's VEVENTs. The connection
is read every 50 ms (plus one GET's time), so the figure is late by up to that. Beside it,
vdirsyncer's initial `sync` of the same calendar into a fresh vdir and status (its `discover`
untimed). Both sides run one untimed warm-up first, then three interleaved rounds (order rotated),
medians and their ratio; each round's namespace is deleted, and the connection purged from the
store, before the next. The report adds per round the SyncJob's own duration and counts.

Then, as detail, the engine in-process. One run measures three cases on the same calendar: the
initial sync into an empty store, an incremental sync after one event changed on the server,
and a sync with nothing changed. Each case runs three ways, interleaved round by round (the
order rotates) so machine noise hits all of them alike, three rounds each, medians reported:

- ours: `SyncEngine.sync_connection` with a `CalDAVProvider` on the collection URL into a SQLite
  store, in a child process of its own, timed inside the child around the sync call only (the
  child's wall time including interpreter start-up and imports is reported beside it). Its peak
  RSS is the child's own (VmHWM; see `bench._util.peak_rss_bytes`), not Radicale's nor ours.
- vdirsyncer: `vdirsyncer -c CONFIG sync` of the same collection to a filesystem vdir, wall clock
  of the CLI process (`discover` runs beforehand, untimed).
- bare REPORT: one sync-collection REPORT (getetag + calendar-data) with a plain httpx client,
  empty token for the initial case and the previous token otherwise, reading the whole body:
  the server's own cost, the floor for any CalDAV client using sync-collection.

Our provider lists a calendar in full (the initial case) with a PROPFIND of its sync-token
followed by one calendar-query for every object, which Radicale answers faster than the
sync-collection from the empty token; the same two requests, bare, are timed after each initial
round and reported beside the table as the floor of that shape.

The initial case starts each round from nothing (fresh store, fresh vdir and vdirsyncer status,
empty token); the last round's state carries on into the incremental rounds (each preceded by a
PUT of one modified event) and then into the no-change rounds.

`python -m bench caldav_sync` runs it; `python -m bench.caldav_sync --apply-only` only the
headline. `python -m bench.caldav_sync --profile DIR` additionally runs our in-process side
under pyinstrument (install it ad hoc) and writes one text profile per sync to DIR; the timings
of such a run are inflated by the profiler.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench._apply import (
    APPLY_POLL,
    ApplyPath,
    ApplyRun,
    connection_yaml,
    interleaved,
    namespace_yaml,
    print_rounds,
    raw_extra,
    secret_yaml,
)
from bench._platform import load_average
from bench._results import Row, at_most
from bench._util import MiB, median, peak_rss_bytes, rotate, ru_maxrss_bytes, verdict

COUNT = 10_000
SEED = 1
ROUNDS = 3
BATCH_SIZE = 500
USER = "bench"
PASSWORD = "bench-password"  # noqa: S105  # a throwaway local Radicale user
SLUG = "work"
CONNECTION = "bench"
PAST_DAYS, FUTURE_DAYS = 365, 730
CASES = ("initial", "incremental", "no-change")
TOOLS = ("ours", "vdirsyncer", "report")
INSTALL_HINT = "pip install -e '.[bench]'"

# Targets: ours over vdirsyncer, and ours over the bare REPORT (None: no target).
TARGETS: dict[str, tuple[float, float | None]] = {
    "initial": (0.5, None),
    "incremental": (0.25, 1.5),
    "no-change": (0.25, 1.5),
}

# Radicale refuses a REPORT whose answer holds more than 10,000 VEVENTs (an anti-DoS cap); this
# calendar holds about 12,600, so the bare single-REPORT reference needs the cap lifted. Our
# provider and vdirsyncer fetch the data in batches and work either way.
RADICALE_SETTINGS = {"reporting": {"max_expand_occurrence": "0"}}

ROOT = Path(__file__).resolve().parents[1]
DAV = "{DAV:}"
CALDAV = "{urn:ietf:params:xml:ns:caldav}"


# -- our side, in a child process ---------------------------------------------------------------


async def _child_sync(
    store_url: str, collection_url: str, batch_size: int, profile: str | None
) -> dict[str, Any]:
    from calsync.model import Window
    from calsync.providers.caldav import CalDAVProvider
    from calsync.store import EventStore
    from calsync.sync.engine import SyncEngine

    store = await EventStore.open(store_url)
    provider = CalDAVProvider(
        collection_url, USER, PASSWORD, allow_insecure_http=True, allow_private_addresses=True
    )
    try:
        engine = SyncEngine(store, batch_size=batch_size)
        window = Window.around(dt.datetime.now(dt.UTC), PAST_DAYS, FUTURE_DAYS)
        profiler: Any = None
        profile_text = ""
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(async_mode="enabled")
            profiler.start()
        started = time.perf_counter()
        result = await engine.sync_connection(CONNECTION, provider, window=window)
        seconds = time.perf_counter() - started
        if profiler is not None:
            profiler.stop()
            profile_text = profiler.output_text(unicode=True, show_all=False)
        peak = peak_rss_bytes()
        resources = 0
        for calendar in result.calendars:
            resources += len(await store.known_etags(CONNECTION, calendar.calendar_id))
        return {
            "seconds": seconds,
            "peak_rss": peak,
            "ru_maxrss": ru_maxrss_bytes(),
            "calendars": len(result.calendars),
            "fetched": result.fetched,
            "upserted": result.upserted,
            "deleted": result.deleted,
            "dropped": sum(c.dropped for c in result.calendars),
            "pages": sum(c.pages for c in result.calendars),
            "full": any(c.full for c in result.calendars),
            "resources": resources,
            "events": await store.count_events(CONNECTION),
            "skipped": [list(s) for s in result.skipped],
            "profile_text": profile_text,
        }
    finally:
        await provider.aclose()
        await store.close()


def _child_main(args: argparse.Namespace) -> int:
    outcome = asyncio.run(_child_sync(args.store, args.url, args.batch_size, args.profile))
    profile_text = outcome.pop("profile_text")
    if args.profile:
        Path(args.profile).write_text(profile_text)
    print(json.dumps(outcome), flush=True)
    return 0


@dataclass
class ChildRun:
    seconds: float  # around sync_connection, inside the child
    wall: float  # the child process, start-up and imports included
    peak_rss: int
    data: dict[str, Any]


def run_ours(
    store: Path, collection_url: str, batch_size: int, profile: Path | None = None
) -> ChildRun:
    command = [
        sys.executable,
        "-m",
        "bench.caldav_sync",
        "--child",
        "--store",
        f"sqlite+aiosqlite:///{store}",
        "--url",
        collection_url,
        "--batch-size",
        str(batch_size),
    ]
    if profile is not None:
        command += ["--profile", str(profile)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), _pythonpath()]))}
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"our sync failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return ChildRun(float(data["seconds"]), wall, int(data["peak_rss"]), data)


def _pythonpath() -> str:
    return os.environ.get("PYTHONPATH", "")


# -- vdirsyncer -----------------------------------------------------------------------------------


def find_vdirsyncer() -> Path:
    here = Path(sys.executable).parent / "vdirsyncer"
    found = here if here.exists() else shutil.which("vdirsyncer")
    if not found:
        raise SystemExit(f"vdirsyncer is not installed (needed as the reference): {INSTALL_HINT}")
    return Path(found)


class Vdirsyncer:
    """One vdirsyncer setup (config, status dir, vdir) syncing the collection to a folder."""

    def __init__(self, binary: Path, folder: Path, collection_url: str) -> None:
        self.binary = binary
        self.folder = folder
        self.vdir = folder / "vdir"
        self.status = folder / "status"
        self.config = folder / "config"
        self.vdir.mkdir(parents=True)
        self.status.mkdir()
        self.config.write_text(
            "[general]\n"
            f"status_path = {json.dumps(str(self.status) + '/')}\n\n"
            "[pair bench]\n"
            'a = "bench_remote"\n'
            'b = "bench_local"\n'
            "collections = null\n"
            'conflict_resolution = "a wins"\n\n'
            "[storage bench_remote]\n"
            'type = "caldav"\n'
            f"url = {json.dumps(collection_url)}\n"
            f"username = {json.dumps(USER)}\n"
            f"password = {json.dumps(PASSWORD)}\n\n"
            "[storage bench_local]\n"
            'type = "filesystem"\n'
            f"path = {json.dumps(str(self.vdir) + '/')}\n"
            'fileext = ".ics"\n'
        )

    def _run(self, command: str) -> float:
        started = time.perf_counter()
        done = subprocess.run(
            [str(self.binary), "-c", str(self.config), command],
            cwd=self.folder,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(
                f"vdirsyncer {command} failed (exit {done.returncode}):\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
            )
        return seconds

    def discover(self) -> None:
        self._run("discover")

    def sync(self) -> float:
        return self._run("sync")

    def files(self) -> list[Path]:
        return sorted(self.vdir.glob("*.ics"))


# -- the bare REPORT ------------------------------------------------------------------------------


def _report_body(token: str) -> bytes:
    token_element = f"<D:sync-token>{token}</D:sync-token>" if token else "<D:sync-token/>"
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<D:sync-collection xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
        f"{token_element}<D:sync-level>1</D:sync-level>"
        "<D:prop><D:getetag/><C:calendar-data/></D:prop>"
        "</D:sync-collection>"
    ).encode()


_TOKEN_PROPFIND = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:propfind xmlns:D="DAV:"><D:prop><D:sync-token/></D:prop></D:propfind>'
)
_EVERY_OBJECT = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<C:calendar-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
    b"<D:prop><D:getetag/><C:calendar-data/></D:prop>"
    b'<C:filter><C:comp-filter name="VCALENDAR"/></C:filter></C:calendar-query>'
)


def bare_query_listing(collection_url: str) -> float:
    """PROPFIND of the sync-token, then calendar-query for everything, whole body read.

    Uncompressed, as our provider asks a loopback server (Radicale would gzip otherwise).
    """
    import httpx

    headers = {"Content-Type": "application/xml; charset=utf-8", "Accept-Encoding": "identity"}
    with httpx.Client(auth=(USER, PASSWORD), timeout=300.0) as client:
        started = time.perf_counter()
        token = client.request(
            "PROPFIND", collection_url, content=_TOKEN_PROPFIND, headers={**headers, "Depth": "0"}
        )
        token.read()
        listing = client.request(
            "REPORT", collection_url, content=_EVERY_OBJECT, headers={**headers, "Depth": "1"}
        )
        data = listing.content
        seconds = time.perf_counter() - started
    if token.status_code != 207 or listing.status_code != 207 or b"BEGIN:VEVENT" not in data:
        raise RuntimeError(f"bare query listing: {token.status_code}, {listing.status_code}")
    return seconds


@dataclass
class Report:
    seconds: float
    body: bytes

    @property
    def tree(self) -> ET.Element:
        return ET.fromstring(self.body)  # noqa: S314  # our own local server's answer

    @property
    def token(self) -> str:
        element = self.tree.find(f"{DAV}sync-token")
        if element is None or not element.text:
            raise RuntimeError("sync-collection REPORT answered without a sync-token")
        return element.text

    def contents(self) -> dict[str, str]:
        """href -> calendar-data of every resource the answer carries."""
        found: dict[str, str] = {}
        for response in self.tree.iter(f"{DAV}response"):
            href = response.findtext(f"{DAV}href") or ""
            data = response.find(f".//{CALDAV}calendar-data")
            if data is not None and data.text:
                found[href] = data.text
        return found


def bare_report(collection_url: str, token: str) -> Report:
    import httpx

    with httpx.Client(auth=(USER, PASSWORD), timeout=300.0) as client:
        body = _report_body(token)
        headers = {"Depth": "0", "Content-Type": "application/xml; charset=utf-8"}
        started = time.perf_counter()
        response = client.request("REPORT", collection_url, content=body, headers=headers)
        data = response.content
        seconds = time.perf_counter() - started
    if response.status_code != 207:
        raise RuntimeError(f"REPORT: {response.status_code} {response.text[:500]}")
    return Report(seconds, data)


# -- the path users run: kubectl apply against `calsync run` ----------------------------------


def _apply_manifest(namespace: str, collection_url: str) -> str:
    """Namespace, labelled credentials Secret and CalendarConnection, as a user writes them."""
    credentials = {"username": USER, "password": PASSWORD}
    return "---\n".join(
        [
            namespace_yaml(namespace),
            secret_yaml(namespace, "caldav-credentials", credentials),
            connection_yaml(
                namespace,
                "  provider: caldav\n"
                "  owner: bench@example.com\n"
                "  caldav:\n"
                f"    url: {collection_url}\n"
                "    allowInsecureHTTP: true\n"
                "    credentialsSecretRef: {name: caldav-credentials}\n",
            ),
        ]
    )


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Case:
    ours: list[float] = field(default_factory=list)
    ours_wall: list[float] = field(default_factory=list)
    ours_rss: list[int] = field(default_factory=list)
    vdirsyncer: list[float] = field(default_factory=list)
    report: list[float] = field(default_factory=list)
    query_listing: list[float] = field(default_factory=list)  # initial only


def _changed(ics: str, n: int) -> str:
    text, count = re.subn(
        r"SUMMARY:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*",
        f"SUMMARY:Changed by the benchmark ({n})\r\n",
        ics,
        count=1,
    )
    if count != 1:
        raise RuntimeError("generated event without SUMMARY")
    return text


def _fail(message: str) -> None:
    raise RuntimeError(f"caldav_sync benchmark: {message}")


class Bench:
    def __init__(self, root: Path, batch_size: int, profile: Path | None) -> None:
        self.root = root
        self.batch_size = batch_size
        self.profile = profile
        self.binary = find_vdirsyncer()
        self.cases = {name: Case() for name in CASES}
        self.url = ""
        self.objects: dict[str, str] = {}
        self.server_resources = 0
        self.server_vevents = 0
        self.stored: dict[str, Any] = {}
        self.store = root / "store-none.db"
        self.vdir: Vdirsyncer | None = None
        self.token = ""
        self.warmup = 0.0
        self.applied: list[ApplyRun] = []
        self.applied_vdirsyncer: list[float] = []
        self.applied_warm: tuple[float, float] | None = None

    def _profile_path(self, case: str, round_: int) -> Path | None:
        if self.profile is None:
            return None
        return self.profile / f"ours-{case}-{round_}.txt"

    def _ours(self, case: str, round_: int, store: Path) -> ChildRun:
        outcome = run_ours(store, self.url, self.batch_size, self._profile_path(case, round_))
        measured = self.cases[case]
        measured.ours.append(outcome.seconds)
        measured.ours_wall.append(outcome.wall)
        measured.ours_rss.append(outcome.peak_rss)
        return outcome

    def _report(self, case: str, token: str) -> Report:
        answer = bare_report(self.url, token)
        self.cases[case].report.append(answer.seconds)
        return answer

    def seed_and_start(self, server: Any) -> None:
        from calsync.testing.icalgen import generate_events

        today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        self.objects = generate_events(COUNT, seed=SEED, start=today)
        server.add_user(USER, PASSWORD)
        server.seed_collection_files(USER, SLUG, self.objects, name="Work")
        server.start()
        self.url = server.collection_url(USER, SLUG)  # the port is known once started
        # Radicale builds its item cache on the first request: pay that before measuring.
        started = time.perf_counter()
        answer = bare_report(self.url, "")
        self.warmup = time.perf_counter() - started
        contents = answer.contents()
        self.server_resources = len(contents)
        self.server_vevents = sum(text.count("BEGIN:VEVENT") for text in contents.values())
        if self.server_resources != COUNT:
            _fail(f"the server holds {self.server_resources} resources, {COUNT} were seeded")

    def _vdirsyncer_initial(self, folder: Path) -> float:
        vdir = Vdirsyncer(self.binary, folder, self.url)
        vdir.discover()
        seconds = vdir.sync()
        if len(vdir.files()) != self.server_resources:
            _fail(f"vdirsyncer wrote {len(vdir.files())} files, not {self.server_resources}")
        shutil.rmtree(folder, ignore_errors=True)
        return seconds

    def apply_path(self) -> None:
        """The headline initial sync: `kubectl apply` until Ready, beside vdirsyncer."""
        url = self.url
        path = ApplyPath(
            self.root / "apply",
            "caldav",
            lambda namespace: _apply_manifest(namespace, url),
            self.server_vevents,
        )
        # Both sides warm: one untimed initial sync each (Radicale's cache is warm already).
        warm_vdir = self._vdirsyncer_initial(self.root / "vdirsyncer-apply-warm")
        folders = iter(range(ROUNDS))

        def vdirsyncer() -> float:
            return self._vdirsyncer_initial(self.root / f"vdirsyncer-apply-{next(folders)}")

        done = interleaved(path, ROUNDS, vdirsyncer)
        self.applied, self.applied_vdirsyncer = done.runs, done.reference
        self.applied_warm = (done.warm, warm_vdir)

    def initial(self) -> None:
        for round_ in range(ROUNDS):
            store = self.root / f"store-initial-{round_}.db"
            vdir = Vdirsyncer(self.binary, self.root / f"vdirsyncer-initial-{round_}", self.url)
            vdir.discover()
            for tool in rotate(TOOLS, round_):
                if tool == "ours":
                    outcome = self._ours("initial", round_, store)
                    self._check_initial(outcome.data)
                elif tool == "vdirsyncer":
                    self.cases["initial"].vdirsyncer.append(vdir.sync())
                    if len(vdir.files()) != self.server_resources:
                        _fail(
                            f"vdirsyncer wrote {len(vdir.files())} files, "
                            f"the server holds {self.server_resources}"
                        )
                else:
                    self.token = self._report("initial", "").token
            self.cases["initial"].query_listing.append(bare_query_listing(self.url))
            # The last round's state carries on; earlier ones only take disk space.
            self._drop_store(self.store)
            if self.vdir is not None:
                shutil.rmtree(self.vdir.folder, ignore_errors=True)
            self.store, self.vdir = store, vdir

    def _check_initial(self, data: dict[str, Any]) -> None:
        self.stored = data
        if data["resources"] != self.server_resources or data["events"] != self.server_vevents:
            _fail(
                f"after the initial sync the store holds {data['resources']} resources and "
                f"{data['events']} events; the server holds {self.server_resources} resources "
                f"with {self.server_vevents} VEVENTs (dropped outside the window: "
                f"{data['dropped']}, skipped: {data['skipped'][:5]})"
            )

    def _drop_store(self, store: Path) -> None:
        for path in (store, Path(f"{store}-wal"), Path(f"{store}-shm")):
            path.unlink(missing_ok=True)

    def incremental(self) -> None:
        from calsync.testing.radicale import put_event

        assert self.vdir is not None
        names = sorted(self.objects)
        for round_ in range(ROUNDS):
            name = names[(len(names) // 3 + 7 * round_) % len(names)]
            marker = f"Changed by the benchmark ({round_})"
            put_event(self.url, name, _changed(self.objects[name], round_), (USER, PASSWORD))
            for tool in rotate(TOOLS, round_):
                if tool == "ours":
                    data = self._ours("incremental", round_, self.store).data
                    if data["upserted"] != 1 or data["full"]:
                        _fail(f"the incremental sync applied {data} instead of one change")
                elif tool == "vdirsyncer":
                    self.cases["incremental"].vdirsyncer.append(self.vdir.sync())
                    hits = [f for f in self.vdir.files() if marker in f.read_text()]
                    if len(hits) != 1:
                        _fail(f"vdirsyncer did not pick up the change ({len(hits)} files)")
                else:
                    answer = self._report("incremental", self.token)
                    self.token = answer.token
                    if len(answer.contents()) != 1:
                        _fail(f"the REPORT carried {len(answer.contents())} changes, not 1")

    def no_change(self) -> None:
        assert self.vdir is not None
        for round_ in range(ROUNDS):
            for tool in rotate(TOOLS, round_):
                if tool == "ours":
                    data = self._ours("no-change", round_, self.store).data
                    if data["upserted"] or data["deleted"] or data["full"]:
                        _fail(f"the no-change sync changed something: {data}")
                elif tool == "vdirsyncer":
                    self.cases["no-change"].vdirsyncer.append(self.vdir.sync())
                else:
                    answer = self._report("no-change", self.token)
                    self.token = answer.token
                    if answer.contents():
                        _fail("the no-change REPORT carried changes")

    def print_header(self) -> None:
        print(
            f"Python {platform.python_version()}, Radicale {metadata.version('radicale')}, "
            f"vdirsyncer {metadata.version('vdirsyncer')}, httpx {metadata.version('httpx')}, "
            f"{os.cpu_count()} CPUs, load average {load_average()}"
        )

    def print_calendar(self) -> None:
        print(
            f"calendar: {self.server_resources} resources, {self.server_vevents} VEVENTs "
            f"(generate_events({COUNT}, seed={SEED}, start=today 00:00 UTC)); "
            f"Radicale cache warm-up (untimed, first REPORT): {self.warmup:.2f} s; "
            "Radicale [reporting] max_expand_occurrence = 0 (the 10,000-VEVENT cap per REPORT "
            "lifted for the bare single-REPORT reference)"
        )

    def print_apply(self) -> None:
        if not self.applied:
            return
        ours = [r.seconds for r in self.applied]
        vdir = self.applied_vdirsyncer
        ratio = median(ours) / median(vdir)
        print(
            "initial sync as users run it: `kubectl apply` of a Namespace, a labelled "
            "credentials Secret and a CalendarConnection (the collection URL) against one "
            "long-running `calsync run` (shipped defaults; SQLite store; local control plane), "
            f"until the connection is Ready with status.eventCount == {self.server_vevents}; "
            f"the connection read every {APPLY_POLL * 1000:.0f} ms (plus one GET's time), "
            "so the figure is late by up to that. vdirsyncer: initial `sync` of the same "
            "calendar, fresh vdir and status each round (`discover` untimed). "
            f"Medians of {ROUNDS} interleaved rounds after one untimed warm-up each "
            f"(warm-up: ours {self.applied_warm[0] if self.applied_warm else 0:.2f} s, "
            f"vdirsyncer {self.applied_warm[1] if self.applied_warm else 0:.2f} s); each "
            "round's namespace is deleted (and the connection purged) before the next."
        )
        print()
        header = (
            f"{'case':<22} | {'ours (s)':>9} | {'vdirsyncer (s)':>14} | {'ours/vdirsyncer':>15}"
        )
        print(header)
        print("-" * len(header))
        print(
            f"{'initial (kubectl apply)':<22} | {median(ours):>9.3f} | {median(vdir):>14.3f} | "
            f"{ratio:>14.3f}x"
        )
        print(f"target: ours <= 0.5x vdirsyncer: {ratio:.3f}x {verdict(ratio <= 0.5)}")
        print(
            f"rounds: ours {_list(ours)}  vdirsyncer {_list(vdir)}  "
            f"ratios {_list([o / v for o, v in zip(ours, vdir, strict=True)])}"
        )
        print_rounds(self.applied)
        print()

    def print_report(self) -> None:
        if not self.cases["initial"].ours:
            return
        print(
            "in-process detail (not the path users run): "
            f"SyncEngine(batch_size={self.batch_size}), SQLite store; after the initial "
            f"sync the store holds {self.stored.get('resources')} resources / "
            f"{self.stored.get('events')} events (server: {self.server_resources} / "
            f"{self.server_vevents}) in {self.stored.get('pages')} pages"
        )
        print(f"median of {ROUNDS} rounds, interleaved (order rotated per round)")
        print()
        header = (
            f"{'case':<12} | {'ours (s)':>9} | {'vdirsyncer (s)':>14} | {'bare REPORT (s)':>15} | "
            f"{'ours/vdirsyncer':>15} | {'ours/REPORT':>11} | {'peak RSS ours (MiB)':>19}"
        )
        print(header)
        print("-" * len(header))
        verdicts: list[str] = []
        for name in CASES:
            case = self.cases[name]
            ours, vdir, rep = median(case.ours), median(case.vdirsyncer), median(case.report)
            rss = max(case.ours_rss) / MiB if case.ours_rss else float("nan")
            print(
                f"{name:<12} | {ours:>9.3f} | {vdir:>14.3f} | {rep:>15.3f} | "
                f"{ours / vdir:>14.3f}x | {ours / rep:>10.2f}x | {rss:>19.1f}"
            )
            vs_vdir, vs_report = TARGETS[name]
            line = f"{name}: ours <= {vs_vdir}x vdirsyncer: {ours / vdir:.3f}x "
            line += verdict(ours <= vs_vdir * vdir)
            if vs_report is not None:
                line += f"; ours <= {vs_report}x bare REPORT: {ours / rep:.2f}x "
                line += verdict(ours <= vs_report * rep)
            verdicts.append(line)
        initial = self.cases["initial"]
        if initial.query_listing:
            floor = median(initial.query_listing)
            print(
                f"initial, the server's part of our full listing (PROPFIND sync-token + "
                f"calendar-query, bare): {floor:.3f} s; ours over it: "
                f"{median(initial.ours) / floor:.2f}x; rounds {_list(initial.query_listing)}"
            )
        print()
        print("targets:")
        for line in verdicts:
            print(f"  {line}")
        print()
        print("raw rounds (s):")
        for name in CASES:
            case = self.cases[name]
            print(
                f"  {name:<12} ours {_list(case.ours)}  vdirsyncer {_list(case.vdirsyncer)}  "
                f"REPORT {_list(case.report)}"
            )
        print(
            "our child process wall time, interpreter start-up and imports included (median): "
            + ", ".join(f"{name} {median(self.cases[name].ours_wall):.3f} s" for name in CASES)
        )
        print(
            "peak RSS ours: the sync child's own peak (VmHWM, max over rounds); its ru_maxrss "
            "would show the harness's peak instead, since Linux carries it across exec"
        )
        if self.profile is not None:
            print(f"pyinstrument profiles in {self.profile} (timings inflated by the profiler)")

    def rows(self) -> list[Row]:
        """The headline and the in-process figures for the table of `python -m bench`."""
        found: list[Row] = []
        if self.applied:
            ours = median([r.seconds for r in self.applied])
            vdir = median(self.applied_vdirsyncer)
            target, passed = at_most(ours / vdir, 0.5)
            found.append(
                Row(
                    benchmark="caldav_sync",
                    case=(
                        f"initial, {self.server_resources} objects: kubectl apply -> Ready "
                        "through `calsync run`"
                    ),
                    ours=ours,
                    reference_name="vdirsyncer initial sync",
                    reference=vdir,
                    ratio=ours / vdir,
                    target=target,
                    passed=passed,
                    extra={
                        "vevents": self.server_vevents,
                        "rounds": ROUNDS,
                        "raw_vdirsyncer_s": self.applied_vdirsyncer,
                        **raw_extra(self.applied),
                    },
                )
            )
        for name in CASES:
            case = self.cases[name]
            if not case.ours:
                continue
            ours, vdir, rep = median(case.ours), median(case.vdirsyncer), median(case.report)
            vs_vdir, vs_report = TARGETS[name]
            extra: dict[str, Any] = {
                "bare_report_s": rep,
                "peak_rss_mib": max(case.ours_rss) / MiB if case.ours_rss else None,
                "child_wall_s": median(case.ours_wall),
                "raw_ours_s": case.ours,
                "raw_vdirsyncer_s": case.vdirsyncer,
                "raw_report_s": case.report,
                "batch_size": self.batch_size,
            }
            if case.query_listing:
                extra["bare_propfind_and_query_s"] = median(case.query_listing)
            target, passed = at_most(ours / vdir, vs_vdir)
            found.append(
                Row(
                    benchmark="caldav_sync",
                    case=f"{name}, engine in-process",
                    ours=ours,
                    reference_name="vdirsyncer",
                    reference=vdir,
                    ratio=ours / vdir,
                    target=target,
                    passed=passed,
                    extra=extra,
                )
            )
            if vs_report is not None:
                target, passed = at_most(ours / rep, vs_report)
                found.append(
                    Row(
                        benchmark="caldav_sync",
                        case=f"{name}, engine in-process",
                        ours=ours,
                        reference_name="bare sync-collection REPORT",
                        reference=rep,
                        ratio=ours / rep,
                        target=target,
                        passed=passed,
                    )
                )
        return found


def _list(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def measure(
    batch_size: int = BATCH_SIZE, profile: Path | None = None, *, apply_only: bool = False
) -> list[Row]:
    from calsync.testing.radicale import RadicaleServer

    find_vdirsyncer()
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="calsync-bench-caldav-"))
    server = RadicaleServer(root / "radicale", settings=RADICALE_SETTINGS)
    try:
        bench = Bench(root, batch_size, profile)
        bench.seed_and_start(server)
        bench.apply_path()
        if not apply_only:
            bench.initial()
            bench.incremental()
            bench.no_change()
    except BaseException:
        tail = server.log_tail()
        if tail:
            print(f"Radicale log tail:\n{tail}", file=sys.stderr)
        raise
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    bench.print_header()
    bench.print_calendar()
    bench.print_apply()
    bench.print_report()
    return bench.rows()


def run() -> list[Row]:
    return measure()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.caldav_sync", description=__doc__)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--profile", help="pyinstrument text profiles of our syncs go here")
    parser.add_argument(
        "--apply-only", action="store_true", help="only the kubectl apply case (the headline)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child_main(args)
    measure(
        args.batch_size, Path(args.profile) if args.profile else None, apply_only=args.apply_only
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
