"""`digestd run`: web front, fetch job and send tick in one event loop; signals, sd_notify."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn

from digestd import config as config_mod
from digestd import pipeline, sdnotify, workers
from digestd.config import Config
from digestd.errors import ConfigError, DigestdError, FeedError
from digestd.health import DaemonState, router
from digestd.inbound import lmtp
from digestd.models import Status
from digestd.scheduler import Scheduler
from digestd.services import Services
from digestd.web import create_app
from digestd.web.context import Web

log = logging.getLogger(__name__)
FETCH_RETRY_MAX = timedelta(minutes=30)
#: how long an instance whose fetch was skipped waits for the one fetching, and how often it
#: looks, before it reads the topics ahead
FETCH_WAIT = timedelta(minutes=10)
FETCH_WAIT_STEP = 1.0


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the daemon decides when the server stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Daemon:
    def __init__(self, config: Config, config_path: Path | None) -> None:
        self.config = config
        self.config_path = config_path
        self.services = Services.build(config)
        self.state = DaemonState(started=datetime.now(UTC), services=self.services)
        self.stop_sending = asyncio.Event()
        self._stop = asyncio.Event()
        self._busy = asyncio.Lock()  # held by a tick or fetch; a reload or stop waits for it
        self._fetch_failures = 0
        self._sending: asyncio.Task[None] | None = None
        self.app = create_app(self.services, routers=[router(self.state)])
        self.scheduler = Scheduler(self.fetch_job, self.tick_job)

    # -- jobs (each is the top of a job: it logs and never raises) ----------------------------

    async def fetch_job(self) -> None:
        now = datetime.now(UTC)
        self.state.last_fetch_attempt = now
        try:
            async with self._busy:
                result = await pipeline.fetch(self.services, now.date(), now=now)
        except FeedError as exc:
            self._fetch_failures += 1
            base = timedelta(seconds=self.config.schedule.fetch_retry_seconds)
            delay = min(base * 2 ** min(self._fetch_failures - 1, 20), FETCH_RETRY_MAX)
            self.state.last_fetch_error = str(exc)
            log.error(
                "fetch failed (%d in a row), retrying in %s: %s", self._fetch_failures, delay, exc
            )
            self.scheduler.retry_fetch(delay)
            return
        except Exception:
            log.exception("fetch job failed")
            return
        self._fetch_failures = 0
        self.state.last_fetch_ok = now
        self.state.last_fetch_error = "; ".join(result.errors)
        if not result.skipped:
            log.info("fetch: %d papers, %d new", result.seen, result.new)
        try:
            # Housekeeping rides on the fetch: requests nobody confirmed leave no address.
            self.app.state.web.subscriptions.purge_unconfirmed(now=now)
        except Exception:
            log.exception("purging unconfirmed requests failed")
        if result.skipped and not await self._other_fetch_done():
            return
        try:
            # The day's topics read against the papers now, once, not by the first big send's
            # processes each (`workers.read_ahead`); also when another instance fetched.
            async with self._busy:
                await workers.read_ahead(self.services, now, self.stop_sending)
        except Exception:
            log.exception("reading the topics ahead failed; the sends read them themselves")

    async def _other_fetch_done(self) -> bool:
        """Wait while another instance fetches (it holds the fetch lock), at most FETCH_WAIT:
        the topics are to be read against the papers it is storing, not the ones before. Sends
        go on meanwhile (the busy lock is not held). False: stopping."""
        deadline = time.monotonic() + FETCH_WAIT.total_seconds()
        held = functools.partial(self.services.store.held, pipeline.FETCH_LOCK)
        while time.monotonic() < deadline and await asyncio.to_thread(held):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_sending.wait(), FETCH_WAIT_STEP)
            if self.stop_sending.is_set():
                return False
        return not self.stop_sending.is_set()

    async def tick_job(self) -> None:
        if self.stop_sending.is_set():
            return
        if self._sending is not None and not self._sending.done():
            return  # a long send is under way; the next tick after it sends what came due
        self.state.last_tick = datetime.now(UTC)
        # In a task of its own, so the job returns at once: a send of many digests outlasts
        # many ticks, and the scheduler would warn about each one it had to skip.
        self._sending = asyncio.create_task(self._send_due(), name="send")

    async def _send_due(self) -> None:
        try:
            async with self._busy:
                await pipeline.send_due(self.services, stop=self.stop_sending)
        except Exception:
            log.exception("send tick failed")

    # -- life cycle ---------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        web = self.config.web
        if self.config.matching.semantic_model:
            # A model that does not load stops the start with its reason (ConfigError), not
            # the first fetch hours later; loaded once, it serves every fetch.
            from digestd.matching import semantic

            await asyncio.to_thread(semantic.model, self.config.matching.semantic_model)
        server = _Server(
            uvicorn.Config(
                self.app,
                host=web.host,
                port=web.port,
                log_config=None,
                access_log=False,
                lifespan="off",
                server_header=False,
                timeout_graceful_shutdown=5,
                # One setting for proxies: X-Forwarded-For is believed only from these.
                forwarded_allow_ips=list(web.trusted_proxies) or ["127.0.0.1"],
            )
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        # Bound here, not by uvicorn: a taken port is then a clear error, not uvicorn's
        # sys.exit() from inside a task.
        try:
            family = socket.AF_INET6 if ":" in web.host else socket.AF_INET
            sock = socket.create_server((web.host, web.port), family=family, backlog=512)
            # asyncio sets TCP_NODELAY only on sockets it knows to be TCP (proto 6); this one
            # says proto 0. Without it every request after the first on a keep-alive
            # connection (a reverse proxy's) waits ~40 ms for Nagle and a delayed ACK.
            # Accepted connections inherit it.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise DigestdError(
                f"cannot serve the web front on {web.host}:{web.port}: {exc.strerror}"
            ) from None
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                raise DigestdError(f"the web front on {web.host}:{web.port} failed to start")
            await asyncio.sleep(0.05)
        try:  # [inbound]: the LMTP listener, after the web front (None when disabled)
            inbound = await lmtp.start(self.config.inbound, lambda: self.services)
        except DigestdError:
            server.should_exit = True
            await serving
            raise
        await self._warm()
        self.scheduler.start(self.config.schedule)
        self.state.scheduler_running = True
        log.info(
            "digestd running: web on http://%s:%d, %d source(s), fetch '%s', tick %ds",
            web.host,
            web.port,
            len(self.config.sources),
            self.config.schedule.fetch_cron,
            self.config.schedule.tick_seconds,
        )
        sdnotify.notify("READY=1\nSTATUS=serving and sending")
        watchdog = asyncio.create_task(self._watchdog())
        await self._stop.wait()

        # Stop taking work, let in-flight sends finish (bounded), then the scheduler, the web.
        sdnotify.notify("STOPPING=1")
        self.state.stopping = True
        self.stop_sending.set()
        grace = self.config.delivery.shutdown_grace_seconds
        try:
            async with asyncio.timeout(grace):
                async with self._busy:
                    pass
        except TimeoutError:
            log.warning(
                "in-flight work did not finish within %ss; its claims will expire "
                "and be taken over on the next start",
                grace,
            )
            if self._sending is not None:
                self._sending.cancel()
        self.scheduler.shutdown()
        self.state.scheduler_running = False
        watchdog.cancel()
        server.should_exit = True
        await serving
        if inbound is not None:
            await inbound.stop()
        await self.services.aclose()
        log.info("digestd stopped")
        return 0

    def request_stop(self, why: str = "") -> None:
        if not self._stop.is_set():
            log.info("stopping (%s)", why or "requested")
        self._stop.set()

    async def reload(self) -> None:
        """SIGHUP: re-read config and templates; in-flight work finishes on the old ones."""
        sdnotify.notify("RELOADING=1")
        try:
            new = config_mod.load(self.config_path)
            if new.database_url != self.config.database_url or (
                (new.web.host, new.web.port) != (self.config.web.host, self.config.web.port)
            ):
                raise ConfigError("database url and web address change only with a restart")
            services = Services.build(new, store=self.services.store)
        except DigestdError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            sdnotify.notify("READY=1")
            return
        async with self._busy:
            old, self.services, self.config = self.services, services, new
            self.state.services = services
            self.app.state.services = services
            limits = self.app.state.web.limits  # rate-limit counts survive a reload
            self.app.state.web = Web.build(services)
            self.app.state.web.limits = limits
            # A SIGHUP during start-up, before the jobs exist: the scheduler starts with the
            # new configuration (run() reads self.config when it gets there).
            if self.scheduler.running:
                self.scheduler.reschedule(new.schedule)
        await old.aclose(close_store=False)
        await self._warm()  # [delivery] processes may have gone from 1 to more
        log.info("configuration and templates reloaded")
        sdnotify.notify("READY=1")

    async def _warm(self) -> None:
        """The send processes' forkserver imports now, not when the first big send is due
        (`workers.warm`: only for a list big enough to be split)."""
        counts = await asyncio.to_thread(self.services.store.subscriber_counts)
        workers.warm(self.config, counts.get(Status.ACTIVE.value, 0))

    async def _watchdog(self) -> None:
        interval = sdnotify.watchdog_seconds()
        if interval is None:
            return
        while True:
            # Pinged from the event loop itself: a blocked loop stops the pings and systemd
            # restarts the service.
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval / 2)


async def run(config: Config, config_path: Path | None) -> int:
    daemon = Daemon(config, config_path)
    return await daemon.run()
