"""A private Postfix instance for tests: its own config, queue and log in a temp folder, smtpd on
two loopback ports, one mail domain handed to an LMTP server, all other mail relayed to a sink.

Several instances run side by side (pytest-xdist workers, the suite on SQLite and PostgreSQL):
each has its own ``config_directory``, ``queue_directory``, ``data_directory``, ``syslog_name``
and ports, and none touches ``/etc/postfix`` or the system's instance. Starting one needs root.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["Postfix", "private_postfix", "require_postfix"]

POSTFIX = Path("/usr/sbin/postfix")
_COMMAND_TIMEOUT = 60

# Every service without a chroot: the instance's files live in a temp folder, not in
# /var/spool/postfix, and Debian's chroot set-up (copying /etc/resolv.conf & co.) is not run.
_SERVICES = """\
pickup    unix  n  -  n  60     1  pickup
cleanup   unix  n  -  n  -      0  cleanup
qmgr      unix  n  -  n  300    1  qmgr
rewrite   unix  -  -  n  -      -  trivial-rewrite
bounce    unix  -  -  n  -      0  bounce
defer     unix  -  -  n  -      0  bounce
trace     unix  -  -  n  -      0  bounce
verify    unix  -  -  n  -      1  verify
flush     unix  n  -  n  1000?  0  flush
proxymap  unix  -  -  n  -      -  proxymap
smtp      unix  -  -  n  -      -  smtp
relay     unix  -  -  n  -      -  smtp
showq     unix  n  -  n  -      -  showq
error     unix  -  -  n  -      -  error
retry     unix  -  -  n  -      -  error
discard   unix  -  -  n  -      -  discard
lmtp      unix  -  -  n  -      -  lmtp
anvil     unix  -  -  n  -      1  anvil
scache    unix  -  -  n  -      1  scache
postlog   unix-dgram n - n -    1  postlogd
"""


def require_postfix() -> None:
    """Skip the calling test where Postfix cannot run; under ``CI=true`` fail instead, so CI
    cannot pass by skipping what it was meant to prove."""
    if not POSTFIX.exists():
        reason = f"needs Postfix at {POSTFIX} (apt-get install postfix; .ci/run installs it)"
    elif os.geteuid() != 0:
        reason = "needs root to start a private Postfix instance"
    else:
        return
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{reason} [CI is set: a skip here would hide the Postfix tests]")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postfix:
    """One instance. ``mx_port`` takes mail as the MX does: for ``domain`` only, and there
    only for the addresses digestd takes; ``submit_port`` relays anywhere for 127.0.0.0/8,
    as digestd's ``[smtp]`` relay."""

    def __init__(self, root: Path, domain: str, lmtp: str, relay: tuple[str, int]) -> None:
        self.root = root
        self.domain = domain
        self.lmtp = lmtp  # host:port of the LMTP server that takes ``domain``'s mail
        self.relay = relay  # where everything else goes: Postfix's relayhost
        self.config_dir = root / "etc"
        self.mx_port = 0
        self.submit_port = 0

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    def log(self) -> str:
        """Postfix's log so far (every instance logs to its own file, not to syslog)."""
        try:
            return self.maillog.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no Postfix log)"

    def _write_config(self) -> None:
        etc = self.config_dir
        etc.mkdir(exist_ok=True)
        domain_re = self.domain.replace(".", r"\.")
        # The README's transport and recipient lines; texthash: needs no postmap.
        (etc / "transport").write_text(f"{self.domain} lmtp:inet:{self.lmtp}\n")
        (etc / "digestd-recipients").write_text(
            f"/^(digest|bounces)(\\+[a-z0-9-]+)?@{domain_re}$/ OK\n"
        )
        main = {
            "compatibility_level": "3.6",
            "queue_directory": self.root / "queue",
            "data_directory": self.root / "data",
            "syslog_name": self.root.name,  # tells the instances' log lines apart
            "maillog_file": self.maillog,
            "maillog_file_prefixes": self.root,
            "myhostname": "mx.digestd.test",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "relay_domains": self.domain,
            "relay_recipient_maps": f"regexp:{etc / 'digestd-recipients'}",
            "transport_maps": f"texthash:{etc / 'transport'}",
            "relayhost": f"[{self.relay[0]}]:{self.relay[1]}",
            "alias_maps": "",
            "alias_database": "",
            # Nothing here may ask DNS: the relay and the LMTP server are IP addresses.
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            "smtpd_peername_lookup": "no",
            # Retry deferred mail (e.g. while digestd is starting) within seconds, not minutes.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        }
        (etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        listeners = (
            f"127.0.0.1:{self.mx_port} inet n - n - - smtpd\n"
            # An MX relays for nobody, whatever its network: only the domain's own addresses.
            "  -o smtpd_relay_restrictions=reject_unauth_destination\n"
            f"127.0.0.1:{self.submit_port} inet n - n - - smtpd\n"
        )
        (etc / "master.cf").write_text(listeners + _SERVICES)
        # Postfix re-reads a main.cf changed within the last two seconds until it has settled
        # (~2 s for each command); dated a minute back, the files are read at once.
        past = time.time() - 60
        for path in etc.iterdir():
            os.utime(path, (past, past))

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(POSTFIX), "-c", str(self.config_dir), *args],
            capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, check=False,
        )  # fmt: skip

    def start(self, attempts: int = 3) -> None:
        """Start on free ports; another attempt on fresh ones if one was taken meanwhile."""
        # Postfix creates its queue folders inside this one; its own user must be able to
        # reach them (and data_directory), so the folder is not private to root as tmp_path is.
        (self.root / "queue").mkdir(mode=0o755, exist_ok=True)
        output = ""
        for _ in range(attempts):
            self.mx_port, self.submit_port = _free_port(), _free_port()
            self._write_config()
            result = self._postfix("start")
            if result.returncode == 0 and self.accepting():
                return
            output += result.stdout + result.stderr
            self.stop()
        raise RuntimeError(f"Postfix did not start: {output}\n{self.log()}")

    def accepting(self) -> bool:
        for port in (self.mx_port, self.submit_port):
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                    if client.ehlo("check.digestd.test")[0] != 250:
                        return False
            except OSError:
                return False
        return True

    def stop(self) -> None:
        if self._postfix("status").returncode != 0:
            return  # not running (or never started)
        if self._postfix("stop").returncode != 0:
            # Only when Postfix itself is broken: its master, by the id in its own pid file.
            pid = (self.root / "queue" / "pid" / "master.pid").read_text().split()[0]
            os.kill(int(pid), signal.SIGKILL)


@contextmanager
def private_postfix(domain: str, lmtp: str, relay: tuple[str, int]) -> Iterator[Postfix]:
    """A started instance that hands ``domain``'s mail to the LMTP server at ``lmtp``
    (``host:port``) and relays all other mail to ``relay``; stopped and removed after."""
    require_postfix()
    root = Path(tempfile.mkdtemp(prefix="digestd-postfix-"))
    root.chmod(0o755)
    postfix = Postfix(root, domain, lmtp, relay)
    try:
        postfix.start()
        yield postfix
    finally:
        postfix.stop()
        shutil.rmtree(root, ignore_errors=True)
