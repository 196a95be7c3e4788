"""The HTTP side of the openai engine: one or more base URLs, requests spread over them, retries.

Each request goes to the live URL with the fewest requests in flight. Connection errors, timeouts, 429,
5xx and answers that are not JSON are retried with exponential backoff, each retry said on stderr with
when it gives up. A URL that stops answering is avoided while another answers; a URL that refused every
retry of a request is dropped for the rest of the run.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
import urllib.error
import urllib.request


class Unreachable(Exception):
    """No answer at all: connection refused, reset or dropped mid-reply."""


class Retryable(Exception):
    """A timeout, 429, 5xx or an answer that is not JSON: the same request may work a moment later."""


class NotJson(Retryable):
    """HTTP 200 with a body that is not JSON (a proxy's error page, a server mid-restart)."""


class Rejected(Exception):
    """A 4xx answer other than 429: sending the same request again will not help."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class Failed(Exception):
    """A request that failed after all its retries."""


class AllGone(Exception):
    """Every base URL has stopped answering."""


class Servers:
    """The base URLs of one engine, with their in-flight counts and failures (thread-safe)."""

    def __init__(self, urls: list[str], api_key: str | None, timeout: float, retries: int, backoff: float):
        self.urls, self.api_key, self.timeout = urls, api_key, timeout
        self.retries, self.backoff = retries, backoff
        self._lock = threading.Lock()
        self._in_flight = dict.fromkeys(self.urls, 0)
        self._failing: set[str] = set()  # refused a connection lately: used only when no other URL answers
        self._dead: set[str] = set()  # refused every retry of a request: not used again in this run
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
                raise Retryable(f"HTTP {err.code}: {detail}") from None
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

    def _acquire(self) -> str:
        """The live URL with the fewest requests in flight, preferring ones that have not failed lately."""
        with self._lock:
            live = [u for u in self.urls if u not in self._dead]
            if not live:
                raise AllGone()
            url = min([u for u in live if u not in self._failing] or live, key=self._in_flight.__getitem__)
            self._in_flight[url] += 1
            return url

    def _unreachable(self, url: str, reason: str, final: bool) -> None:
        with self._lock:
            others = [u for u in self.urls if u != url and u not in self._dead and u not in self._failing]
            if url not in self._failing and others:
                print(f"openai engine: {url} stopped answering ({reason}); going on with {len(others)} other URL(s)",
                      file=sys.stderr)
            self._failing.add(url)
            if final:  # this request waited through every retry and the URL still does not answer
                self._dead.add(url)

    def post(self, path: str, body: dict) -> dict:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 60.0))
            url = self._acquire()
            try:
                answer = self.send(url, path, body)
            except Unreachable as err:
                last = f"{url}: {err}"
                self._unreachable(url, str(err), final=attempt == self.retries)
                self._say_retry(last, attempt)
                continue
            except Retryable as err:
                last = f"{url}: {err}"
                self._say_retry(last, attempt)
                continue
            finally:
                with self._lock:
                    self._in_flight[url] -= 1
            with self._lock:
                self._failing.discard(url)
            return answer
        with self._lock:
            if len(self._dead) == len(self.urls):
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
