"""Alertmanager sink: events from pp.events become alerts through Alertmanager's v2 API (see README.md
beside this file). What to post and when is decided by alerts.AlertBook (pure), the cause-scope labels by
causes.py from the site file; this class only posts."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from powerplane import topics
from powerplane.config import RUNBOOK_BASE_URL, absolute_url
from powerplane.schemas import Event, Record
from powerplane.site_file import load_site
from powerplane.validation import ConfigError
from streams.sinks.alertmanager.alerts import SEVERITY_RANK, Alert, AlertBook
from streams.sinks.alertmanager.causes import cause_scopes
from streams.sinks.base import HttpUrl, RetryableSinkError, Sink, SinkConfigError, SinkOptions, seconds

log = logging.getLogger("powerplane.sink.alertmanager")

RETRYABLE = (408, 429, 500, 502, 503, 504)


class AlertmanagerRejected(RuntimeError):
    """Alertmanager refused the alerts themselves (4xx other than 408/429): retrying cannot help."""


def _severity(v: str) -> str:
    if v not in SEVERITY_RANK:
        raise ValueError(f"must be one of {', '.join(SEVERITY_RANK)}, got {v!r}")
    return v


class Options(SinkOptions):
    """A [sinks.NAME] table of kind "alertmanager" (README.md beside this file)."""

    url: HttpUrl
    repost_s: float = Field(60.0, gt=0)  # re-post open alerts this often
    timeout_ms: int = Field(5000, gt=0)  # HTTP timeout per request
    min_severity: Annotated[str, AfterValidator(_severity)] = "warning"
    runbook_base_url: Annotated[str, AfterValidator(absolute_url)] = RUNBOOK_BASE_URL
    site_file: str = ""  # the site's TOML: feed/lineup labels, so a feed loss silences what it causes
    cause_hold_max_s: float = Field(60.0, ge=0)  # a resolved cause kept firing for what it silences, at most
    site_telemetry_loss_frac: float = Field(0.5, gt=0, le=1)  # share of racks silent: SiteTelemetryLoss


class AlertmanagerSink(Sink):
    kind = "alertmanager"
    options_model = Options

    topics = (topics.EVENTS.name,)

    def configure(self, opts: Options) -> None:
        self.url = opts.url.rstrip("/")
        self.timeout_s = opts.timeout_ms / 1000
        self.book = AlertBook(runbook_base_url=opts.runbook_base_url, repost_s=opts.repost_s,
                              min_severity=opts.min_severity, cause_hold_max_s=opts.cause_hold_max_s,
                              site_telemetry_loss_frac=opts.site_telemetry_loss_frac)
        if opts.site_file:
            # Read here, with the options: a wrong path is a configuration mistake, reported at load.
            try:
                site = load_site(opts.site_file)
            except ConfigError as e:
                raise SinkConfigError([f"sinks.{self.name}.site_file: {opts.site_file}: {line}"
                                       for line in e.errors]) from None
            self.book.scopes[site.name] = cause_scopes(site)
            self.book.racks[site.name] = site.n_racks
        self.unscoped: set[str] = set()  # sites warned about: no site model, so no inhibition by cause
        self.adopted = False
        self.next_adopt_s = 0.0
        self.failing = False
        self.rejected = 0  # alerts Alertmanager refused (logged, not retried)
        self.pending: list[Alert] = []

    # ---- HTTP -----------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                text = r.read().decode() or "null"
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace").strip()[:200]
            if e.code in RETRYABLE:
                raise RetryableSinkError(f"{self.url} answered {e.code}: {detail}",
                                         retry_after_s=seconds(e.headers.get("Retry-After"))) from None
            raise AlertmanagerRejected(f"{self.url}{path} answered {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RetryableSinkError(f"{self.url} unreachable: {reason}") from None
        return json.loads(text)

    def post(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        try:
            self._request("POST", "/api/v2/alerts", alerts)
        except AlertmanagerRejected as e:
            # Bad alerts are not worth stopping the sink for (the next events must still page someone).
            self.rejected += len(alerts)
            ids = ", ".join(str(a["annotations"].get("event_id")) for a in alerts)
            log.error("sink %s: %s; dropped alert(s) for event(s) %s", self.name, e, ids)

    def _adopt(self, now_s: float) -> None:
        q = urllib.parse.urlencode({"active": "true", "silenced": "true", "inhibited": "true",
                                    "unprocessed": "true"})
        held = self._request("GET", f"/api/v2/alerts?{q}")
        n = self.book.adopt(held if isinstance(held, list) else [], now_s)
        self.adopted = True
        if n:
            log.info("sink %s: re-posting %d open alert(s) Alertmanager already held", self.name, n)

    # ---- Sink -----------------------------------------------------------------------------
    def write(self, records: Sequence[Record]) -> int:
        now_s = time.time()
        for r in records:
            if isinstance(r, Event):
                self._check_scoped(r.site)
                self.pending.extend(self.book.update(r, now_s))
        # On RetryableSinkError the runner calls write() again with the same records: the book has
        # already taken them in (and returns nothing new), so what is still to post waits in pending.
        self.post(self.pending)
        n = len(self.pending)
        self.pending = []
        return n

    def _check_scoped(self, site: str) -> None:
        if site not in self.book.scopes and site not in self.unscoped:
            self.unscoped.add(site)
            log.warning("sink %s: no site file for site %r (option site_file; PP_SITE_FILE): its alerts carry no "
                        "feed/lineup labels, so a feed or UPS loss will not silence the alerts it causes",
                        self.name, site)

    def tick(self, now_s: float) -> None:
        try:
            if not self.adopted and now_s >= self.next_adopt_s:
                self.next_adopt_s = now_s + self.book.retry_s
                self._adopt(now_s)
            due = self.book.due(now_s)
            try:
                self.post(due)
            except RetryableSinkError:
                self.book.failed(due, now_s)
                raise
            if self.failing:
                log.info("sink %s: Alertmanager is back; open alerts re-posted", self.name)
                self.failing = False
        except (RetryableSinkError, AlertmanagerRejected, ValueError) as e:
            if not self.failing:
                log.warning("sink %s: cannot re-post open alerts: %s; trying again in %.0f s", self.name, e,
                            self.book.retry_s)
            self.failing = True
