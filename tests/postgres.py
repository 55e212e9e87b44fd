"""A real PostgreSQL server for tests: initdb in a temporary folder, listening on loopback.

    def test_something(postgres):      # the fixture: a started server, stopped afterwards
        url = postgres.url             # postgresql://postgres@127.0.0.1:PORT/nasgraph
        postgres.stop(); postgres.start()   # an outage

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
`postgres` system user. The tests that use it are skipped when no PostgreSQL binaries exist
(`make setup` installs them).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def find_bindir() -> Path | None:
    """The folder of pg_ctl: the newest /usr/lib/postgresql/*/bin, else PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One throwaway cluster: `start()`, `stop()`, `restart()`, `cleanup()`."""

    def __init__(self, bindir: Path, database: str = "nasgraph") -> None:
        self.bindir = bindir
        self.database = database
        self.root = Path(tempfile.mkdtemp(prefix="nasgraph-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.running = False
        self.as_postgres = os.geteuid() == 0
        self.sockets.mkdir()
        if self.as_postgres:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sockets, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, program: str, *args: str, timeout: float = 60) -> str:
        cmd = [str(self.bindir / program), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           cwd=self.root)
        if r.returncode != 0:
            log = self.log.read_text() if self.log.is_file() else ""
            raise RuntimeError(f"{program} failed: {r.stderr.strip()}\n{log[-2000:]}")
        return r.stdout

    def start(self) -> None:
        options = (f"-h 127.0.0.1 -p {self.port} -k {self.sockets} -c fsync=off "
                   "-c synchronous_commit=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log),
                  "-w", "-t", "60", "start")
        self.running = True
        databases = self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                              "postgres", "-d", "postgres", "-Atc", "SELECT datname FROM "
                              "pg_database")
        if self.database not in databases.split():
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                      self.database)

    def stop(self) -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            self.running = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def postgres():
    """A started PostgreSQL server with an empty database, removed after the test."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries (pg_ctl) under /usr/lib/postgresql/*/bin or on "
                    "PATH; `make setup` installs the postgresql package")
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
