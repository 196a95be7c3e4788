"""The HTTP side of the openai engine: one or more base URLs, requests spread over them, retries.

Each request goes to the live URL with the fewest requests in flight, and at most `max_in_flight` requests
are in flight over all URLs. Connection errors, timeouts, 429, 5xx and answers that are not JSON are retried
with exponential backoff, each retry said on stderr with when it gives up; a 429 or 503 with `Retry-After`
rests its URL that long (at most a minute). A URL that stops answering is avoided while another answers;
a URL that refused every retry of a request is down: no request goes to it, and it is asked for `/models`
again after 5 s, doubling to a minute, and used again once it answers. With a URL file (`base_urls_file`),
the list is read again every 5 s while requests are sent: new URLs are used once they answer, and URLs
taken out of the file get no more requests.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

# A down URL is asked for /models again after PROBE_FIRST seconds, the wait doubling to PROBE_MOST while it stays
# down; a URL file is read again at most every REREAD_EVERY seconds; a Retry-After rests a URL for at most
# REST_MOST seconds.
PROBE_FIRST, PROBE_MOST, REREAD_EVERY, REST_MOST = 5.0, 60.0, 5.0, 60.0


class Unreachable(Exception):
    """No answer at all: connection refused, reset or dropped mid-reply."""


class Retryable(Exception):
    """A timeout, 429, 5xx or an answer that is not JSON: the same request may work a moment later (after
    `retry_after` seconds, when the server said so)."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class NotJson(Retryable):
    """HTTP 200 with a body that is not JSON (a proxy's error page, a server mid-restart)."""


class Rejected(Exception):
    """A 4xx answer other than 429: sending the same request again will not help."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


def read_url_file(path: str | Path) -> list[str]:
    """The URLs of a URL file: one per line; blank lines and `#` comments are skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip().rstrip("/") for line in lines if line.split("#", 1)[0].strip()]


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class Failed(Exception):
    """A request that failed after all its retries."""


class AllGone(Exception):
    """Every base URL has stopped answering."""


class Servers:
    """The base URLs of one engine, with their in-flight counts and failures (thread-safe).

    A URL is up (requests go to it; `failing` ones only when no other answers) or down (none go to it, and
    a daemon thread asks it for /models when its back-off has passed). `accept` turns a /models listing into
    a reason not to use that server (it serves another model), or None.
    """

    def __init__(
        self,
        urls: list[str],
        api_key: str | None,
        timeout: float,
        retries: int,
        backoff: float,
        max_in_flight: int = 1 << 16,
        url_file: str | None = None,
    ):
        self.urls, self.api_key, self.timeout = list(dict.fromkeys(urls)), api_key, timeout
        self.retries, self.backoff = retries, backoff
        self.given, self.url_file = list(self.urls), url_file
        self.accept: Callable[[dict], str | None] = lambda listing: None
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._in_flight = dict.fromkeys(self.urls, 0)
        self._failing: set[str] = set()  # refused a connection lately: used only when no other URL answers
        self._down: set[str] = set()  # refused every retry of a request, or never answered: not used until it does
        self._refused: set[str] = set()  # serves another model: never used
        self._probe_at: dict[str, float] = {}  # failing or down URLs: when to ask them for /models next
        self._probe_wait: dict[str, float] = {}
        self._probing: set[str] = set()
        self._resting: dict[str, float] = {}  # Retry-After: no request before this time
        self._read_at = float("-inf")
        self._said_bad: set[str] = set()
        self._started = False
        self._said_retry = float("-inf")  # when a retry was last said (one line per 30 s, not per request)

    def send(self, url: str, path: str, body: dict | None, timeout: float | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        method = "GET" if body is None else "POST"
        request = urllib.request.Request(url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:300].replace("\n", " ")
            if err.code == 429 or err.code >= 500:
                raise Retryable(f"HTTP {err.code}: {detail}", _retry_after(err.headers.get("Retry-After"))) from None
            raise Rejected(err.code, detail) from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, TimeoutError):
                raise Retryable(f"no answer within {timeout or self.timeout:g} s") from None
            raise Unreachable(str(err.reason)) from None
        except TimeoutError:
            raise Retryable(f"no answer within {timeout or self.timeout:g} s") from None
        except (ConnectionError, http.client.HTTPException) as err:
            raise Unreachable(type(err).__name__) from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise NotJson("HTTP 200 but the answer is not JSON") from None

    # -- which URLs there are, and which answer ---------------------------------------------------

    def reread(self) -> None:
        """Read the URL file now (at start, before the first probes)."""
        with self._lock:
            self._read_at = float("-inf")
            self._read_file(time.monotonic())

    def _read_file(self, now: float) -> list[str]:
        """Read the URL file again when REREAD_EVERY has passed; return the URLs it adds (they start down and
        are probed at once). Called with the lock held."""
        if not self.url_file or now - self._read_at < REREAD_EVERY:
            return []
        self._read_at = now
        try:
            listed = read_url_file(self.url_file)
        except (OSError, UnicodeDecodeError) as err:
            if str(err) not in self._said_bad:  # once per cause, not every REREAD_EVERY
                print(f"openai engine: cannot read {self.url_file} ({err}); keeping its last URLs", file=sys.stderr)
                self._said_bad.add(str(err))
            return []
        for line in set(listed) - self._said_bad:
            if not line.startswith(("http://", "https://")):
                print(f"openai engine: {self.url_file}: skipping {line!r}, not an http:// or https:// URL",
                      file=sys.stderr)
                self._said_bad.add(line)
        listed = [u for u in listed if u.startswith(("http://", "https://"))]
        if not listed and self.urls:  # a file caught mid-rewrite reads empty: keep the URLs we have
            return []
        wanted = list(dict.fromkeys(self.given + listed))
        added = [u for u in wanted if u not in self.urls]
        for url in added:
            self._in_flight.setdefault(url, 0)
            self._down.add(url)
            self._probe_at[url], self._probe_wait[url] = now, PROBE_FIRST
        removed = [u for u in self.urls if u not in wanted]
        if self._started and (added or removed):
            print(f"openai engine: {self.url_file}: {len(added)} URL(s) added, {len(removed)} taken out",
                  file=sys.stderr)
        self.urls = wanted
        return added

    def start_with(self, answered: list[str]) -> None:
        """Begin with the URLs that answered at start; the others are down until a probe finds them up."""
        now = time.monotonic()
        with self._lock:
            self._started = True
            for url in self.urls:
                if url in answered:
                    self._down.discard(url)
                    self._probe_at.pop(url, None)
                else:
                    self._down.add(url)
                    self._probe_at[url], self._probe_wait[url] = now + PROBE_FIRST, 2 * PROBE_FIRST

    def _probe_due(self, now: float) -> None:
        """Ask each failing or down URL whose back-off has passed for /models, in a daemon thread each.
        Called with the lock held."""
        for url, when in list(self._probe_at.items()):
            if when <= now and url not in self._probing and url in self.urls:
                self._probing.add(url)
                threading.Thread(target=self._probe, args=(url,), daemon=True).start()

    def _probe(self, url: str) -> None:
        try:
            listing = self.send(url, "/models", None, timeout=min(self.timeout, 10.0))
            problem = self.accept(listing if isinstance(listing, dict) else {})
        except (Unreachable, Retryable, Rejected) as err:
            if not isinstance(err, Rejected) or err.status in (401, 403):
                with self._lock:
                    wait = self._probe_wait.get(url, PROBE_FIRST)
                    self._probe_at[url], self._probe_wait[url] = time.monotonic() + wait, min(2 * wait, PROBE_MOST)
                    self._probing.discard(url)
                return
            problem = None  # a server without /models: the requests themselves will say
        with self._lock:
            self._probing.discard(url)
            self._probe_at.pop(url, None)
            self._probe_wait.pop(url, None)
            if problem:
                self._refused.add(url)
                print(f"openai engine: {url} {problem}; not using it", file=sys.stderr)
                return
            if url in self._down:
                print(f"openai engine: {url} answers; using it", file=sys.stderr)
            self._down.discard(url)
            self._failing.discard(url)

    # -- one request --------------------------------------------------------------------------------

    def _acquire(self) -> tuple[str, float]:
        """The up URL with the fewest requests in flight, preferring ones that have not failed lately and are not
        resting; with how long it still rests."""
        now = time.monotonic()
        with self._lock:
            self._read_file(now)
            self._probe_due(now)
            up = [u for u in self.urls if u not in self._down and u not in self._refused]
            if not up:
                raise AllGone()
            steady = [u for u in up if u not in self._failing]
            ready = [u for u in steady if self._resting.get(u, 0.0) <= now]
            url = min(ready or steady or up, key=lambda u: (self._in_flight[u], self._resting.get(u, 0.0)))
            self._in_flight[url] += 1
            return url, max(0.0, self._resting.get(url, 0.0) - now)

    def _unreachable(self, url: str, reason: str, final: bool) -> None:
        with self._lock:
            others = [u for u in self.urls if u != url and u not in self._down and u not in self._failing]
            if url not in self._failing and url not in self._down and others:
                print(f"openai engine: {url} stopped answering ({reason}); going on with {len(others)} other URL(s)",
                      file=sys.stderr)
            self._failing.add(url)
            if url not in self._probe_at:
                self._probe_at[url], self._probe_wait[url] = time.monotonic() + PROBE_FIRST, 2 * PROBE_FIRST
            if final:  # this request waited through every retry and the URL still does not answer
                self._down.add(url)

    def post(self, path: str, body: dict) -> dict:
        last, rested = "", False
        for attempt in range(self.retries + 1):
            if attempt and not rested:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 60.0))
            rested = False
            url, rest = self._acquire()
            try:
                if rest:
                    time.sleep(rest)
                with self._slots:
                    answer = self.send(url, path, body)
            except Unreachable as err:
                last = f"{url}: {err}"
                self._unreachable(url, str(err), final=attempt == self.retries)
                self._say_retry(last, attempt)
                continue
            except Retryable as err:
                last = f"{url}: {err}"
                if err.retry_after is not None:  # the server said when to come back: rest it, try elsewhere now
                    with self._lock:
                        self._resting[url] = time.monotonic() + min(err.retry_after, REST_MOST)
                    rested = True
                self._say_retry(last, attempt)
                continue
            finally:
                with self._lock:
                    self._in_flight[url] -= 1
            with self._lock:
                self._failing.discard(url)
                if url not in self._down:
                    self._probe_at.pop(url, None)
            return answer
        with self._lock:
            if all(u in self._down or u in self._refused for u in self.urls):
                raise AllGone(last)
        raise Failed(f"failed after {self.retries + 1} tr{'y' if self.retries == 0 else 'ies'}: {last}")

    def _say_retry(self, reason: str, attempt: int) -> None:
        """A progress line on stderr: which try failed, and how long the request may still take before it fails."""
        left = self.retries - attempt
        if not left:
            return
        most = sum(min(self.backoff * 2**k, 60.0) for k in range(attempt, self.retries)) + left * self.timeout
        with self._lock:
            if time.monotonic() - self._said_retry < 30.0:
                return
            self._said_retry = time.monotonic()
        print(f"openai engine: {reason} (try {attempt + 1} of {self.retries + 1}); retrying, giving up after "
              f"{left} more tr{'y' if left == 1 else 'ies'} (at most {most:.0f} s)", file=sys.stderr)
