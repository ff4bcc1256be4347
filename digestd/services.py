"""Wiring: config → store, mailer, renderer, signer and sources, built once and closed once."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType

import httpx

from digestd import __version__
from digestd.config import Config
from digestd.deliver import Mailer, OutboxMailer, SmtpMailer
from digestd.dkim import DkimSigner
from digestd.metrics import Metrics
from digestd.render import Renderer
from digestd.sources import Source, build_source
from digestd.store import Store
from digestd.tokens import Signer, load_secret


@dataclass
class Services:
    config: Config
    store: Store
    mailer: Mailer
    renderer: Renderer
    signer: Signer
    sources: list[Source]
    metrics: Metrics = field(default_factory=Metrics)
    _client: httpx.AsyncClient | None = field(default=None, repr=False)

    @classmethod
    def build(cls, config: Config, *, store: Store | None = None) -> Services:
        """Everything a command needs; opening the store migrates it to the current schema."""
        sign = DkimSigner.load(config.dkim)  # None unless [dkim] is set: nothing is signed
        store = store or Store.open(config.database_url)
        mailer: Mailer = (
            SmtpMailer(config.smtp, sign=sign)
            if config.smtp.host
            else OutboxMailer(config.outbox, sign=sign)
        )
        client = None
        if any(s.type != "json" for s in config.sources):
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(30.0),
                headers={"User-Agent": f"digestd/{__version__}"},
                follow_redirects=True,
            )
        sources = [
            build_source(
                s.type, client=client, path=s.path, categories=s.categories, base_url=s.url or None
            )
            for s in config.sources
        ]
        metrics = Metrics()
        metrics.watch_subscribers(store.subscriber_counts)
        return cls(
            config=config,
            metrics=metrics,
            store=store,
            mailer=mailer,
            renderer=Renderer(config.templates),
            signer=Signer(load_secret(config.web.secret_key_file)),
            sources=sources,
            _client=client,
        )

    async def aclose(self, *, close_store: bool = True) -> None:
        await self.mailer.aclose()
        if self._client is not None:
            await self._client.aclose()
        if close_store:
            self.store.close()

    async def __aenter__(self) -> Services:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
