"""Generation through any OpenAI-compatible server: `vllm serve`, SGLang, TGI, `transformers serve`, Ollama.

One HTTP request per conversation, up to `max_concurrency` in flight over all calls, so the server's own
continuous batching does the batching (and its prefix cache shares the few-shot prefix). The engine serves
concurrent calls (`concurrent`), so `cai generate` sends each row's next step as soon as its last one
returns instead of waiting for a whole chunk. Each request goes to the base URL with the fewest requests in
flight; connection errors, timeouts, 429, 5xx and answers that are not JSON are retried with exponential
backoff (`servers.py`), each retry said on stderr with when it gives up. The run starts once a URL answers
(waiting up to `startup_timeout`); the others, and URLs added to `base_urls_file` later, are used once they
answer. A URL that stops answering is avoided while another answers, and used again when it answers; when a
request has spent its retries and no URL answers, the run stops with one line (the rows finished so far are on
disk, and rerunning the command resumes). Any other failure of one request becomes an error completion, which
`cai generate` stops on with one line, or with `--on-error skip` writes as an error row.

Plain HTTP from the standard library, so this engine needs no extra. The API key is read from the
environment variable named by `api_key_env` and is never printed. With `raw_prompt`, the last message is
the model's whole input (a guard prompt that `cai eval --safety-judge` renders): it goes to /v1/completions as is.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from cai_kit.core.errors import UsageError
from cai_kit.engines import Completion, Conversation, GenParams
from cai_kit.engines.servers import (
    AllGone,
    Failed,
    NotJson,
    Rejected,
    Retryable,
    Servers,
    Unreachable,
    read_url_file,
)

DEFAULT_URL = "http://127.0.0.1:8000/v1"
# vllm's (and SGLang's) additions to the chat API. Servers that keep to OpenAI's schema strictly
# (`transformers serve`) reject them; the engine then drops them and prefills through /v1/completions.
EXTENSIONS = ("repetition_penalty", "continue_final_message", "add_generation_prompt")


def _error(reason: str) -> Completion:
    return Completion(text=reason[:300], finish_reason="error", tokens=0)


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


class OpenAIEngine:
    concurrent = True  # calls from many threads at once are welcome: cai generate pipelines rows through them

    def __init__(
        self,
        model: str,
        base_urls: str | list[str] | None = None,  # DEFAULT_URL, unless base_urls_file names the servers
        base_urls_file: str | None = None,  # one URL per line, `#` comments; read again every 5 s during the run
        startup_timeout: float = 60.0,  # how long to wait for the first server to answer
        served_model_name: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 16,
        timeout: float = 120.0,  # per request; with the retries a dead server is given up on within ~8 min
        retries: int = 3,
        backoff: float = 1.0,
        tokenizer: str | None = None,
        extra_body: dict[str, Any] | None = None,
        batch_size: int = 32,  # not used: each conversation is its own request and the server batches them
        trust_remote_code: bool = False,  # only for the local tokenizer (prefill fallback, log-probs)
        progress: bool = True,
        raw_prompt: bool = False,
    ):
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls or [])
        if base_urls is None and not base_urls_file:
            urls = [DEFAULT_URL]
        problems, listed = [], []
        if base_urls_file:  # it may list no URL yet: servers that start with the run add theirs
            try:
                listed = read_url_file(base_urls_file)
            except (OSError, UnicodeDecodeError) as err:
                problems.append(f"engine 'openai': cannot read base_urls_file {base_urls_file} ({err})")
        problems += [f"engine 'openai': base URL {u!r} must start with http:// or https://"
                     for u in urls + listed if not str(u).startswith(("http://", "https://"))]
        if not urls and not base_urls_file:
            problems.append("engine 'openai': give at least one --base-url")
        for name, value, low in (("max_concurrency", max_concurrency, 1), ("retries", retries, 0)):
            if not isinstance(value, int) or value < low:
                problems.append(f"engine 'openai': {name} must be an integer >= {low}, got {value!r}")
        for name, seconds in (("timeout", timeout), ("backoff", backoff), ("startup_timeout", startup_timeout)):
            if not isinstance(seconds, (int, float)) or seconds < 0 or (name == "timeout" and seconds == 0):
                problems.append(f"engine 'openai': {name} must be a positive number of seconds, got {seconds!r}")
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and api_key_env != "OPENAI_API_KEY" and not self.api_key:
            problems.append(f"engine 'openai': api_key_env names {api_key_env}, which is not set in the environment")
        if problems:
            raise UsageError(problems)
        self.urls = [str(u).rstrip("/") for u in urls]
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.startup_timeout = float(startup_timeout)
        self.servers = Servers(self.urls, self.api_key, self.timeout, retries, backoff, max_concurrency,
                               base_urls_file)
        self.tokenizer_source = tokenizer
        self.extra_body = dict(extra_body or {})
        self.trust_remote_code = trust_remote_code
        self.progress = progress
        self.raw_prompt = raw_prompt
        self.generated_tokens = 0  # running total, read by progress displays and benchmarks
        self._lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        self._tokenizer: Any = None
        self._plain = False  # the server rejected EXTENSIONS
        self.model_name = served_model_name or model
        self._check_servers()

    # -- start-up checks: every problem with the servers as one line each, before any work --------

    def _check_servers(self) -> None:
        """Wait up to startup_timeout for a URL to answer /models; start with those that do. A refused key or a
        model no server lists stops the run here, and so does no URL answering in time, each as one line."""
        deadline, said = time.monotonic() + self.startup_timeout, False
        while True:
            self.servers.reread()
            answers = self._ask_all(list(self.servers.urls))
            refused = [line for url, line in answers.items() if line and url in self._key_refused]
            if refused:  # a wrong key will not come right by waiting
                raise UsageError(refused)
            answered = [url for url, line in answers.items() if line is None]
            if answered or time.monotonic() >= deadline:
                break
            if not said:
                print(f"openai engine: waiting up to {self.startup_timeout:g} s for a server to answer at "
                      f"{', '.join(answers)}", file=sys.stderr)
                said = True
            time.sleep(1.0)
        if not answered:
            raise UsageError([line for line in answers.values() if line] or [
                f"engine 'openai': {self.servers.url_file} lists no server URL (waited {self.startup_timeout:g} s)"])
        served: set[str] = set()
        for url in answered:
            served |= self._served.get(url, set())
        if self.model_name == "default":
            listed = f"it serves: {', '.join(sorted(served))}" if served else "it lists no model"
            raise UsageError(f"engine 'openai': pass --model as the server names it ({listed})")
        if served and not self._serves(served):
            raise UsageError(f"engine 'openai': the server does not serve {self.model_name!r}; "
                             f"it serves: {', '.join(sorted(served))} (pass one as --model)")
        self.servers.accept = self._other_model
        self.servers.start_with(answered)
        if len(answered) < len(answers):
            print(f"openai engine: starting with {len(answered)} of {len(answers)} URLs; the others are used once "
                  "they answer", file=sys.stderr)

    def _ask_all(self, urls: list[str]) -> dict[str, str | None]:
        """Each URL's problem as one line, or None where it answered /models (its model names in _served; a
        refused key in _key_refused)."""
        self._served: dict[str, set[str]] = {}
        self._key_refused: set[str] = set()

        def ask(url: str) -> str | None:
            try:
                listing = self.servers.send(url, "/models", None, timeout=min(self.timeout, 30.0))
                self._served[url] = {str(m.get("id")) for m in listing.get("data", []) if isinstance(m, dict)}
            except Unreachable as err:
                return (f"engine 'openai': no server answers at {url} ({err}); start one first "
                        "(e.g. `vllm serve MODEL`) or fix --base-url")
            except Rejected as err:
                if err.status in (401, 403):
                    key = f"the key in {self.api_key_env}" if self.api_key else f"no key ({self.api_key_env} is unset)"
                    self._key_refused.add(url)
                    return f"engine 'openai': the server at {url} refused {key} (HTTP {err.status})"
                # other answers (a server without /models) do not stop the run
            except NotJson:
                pass  # nor does a /models that is not JSON: the requests themselves will say
            except Retryable as err:
                return f"engine 'openai': the server at {url} is not ready ({err}); try again shortly"
            return None

        with ThreadPoolExecutor(max_workers=max(1, min(16, len(urls)))) as pool:
            return dict(zip(urls, pool.map(ask, urls)))

    def _serves(self, served: set[str]) -> bool:
        known = served | {name.removesuffix(":latest") for name in served}  # Ollama's implicit tag
        return self.model_name in known or Path(self.model_name).is_dir()

    def _other_model(self, listing: dict) -> str | None:
        """Why a server that came up during the run is not used: it lists models, and not this one."""
        served = {str(m.get("id")) for m in listing.get("data", []) if isinstance(m, dict)}
        if served and not self._serves(served):
            return f"serves {', '.join(sorted(served))}, not {self.model_name!r}"
        return None

    def _map(self, work: Callable[[int], Any], count: int, unit: str) -> list[Any]:
        """Run `work(k)` for every k with up to max_concurrency in flight; results in input order. One item runs
        in the calling thread (cai generate's pipeline calls with one conversation from many threads); a bar
        shows only for calls that queue (more items than max_concurrency)."""
        from tqdm import tqdm

        results: list[Any] = [None] * count
        bar = tqdm(total=count, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True,
                   disable=not self.progress or count <= self.max_concurrency)
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, count - 1)))
        try:
            if count == 1:
                results[0] = work(0)
            futures = {pool.submit(work, k): k for k in range(count if count > 1 else 0)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(1)
        except AllGone as err:
            raise UsageError(
                f"engine 'openai': no server answers any more ({str(err) or ', '.join(self.servers.urls)}); the rows "
                "finished so far are kept: start the server(s) and rerun the same command to resume"
            ) from None
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            bar.close()
        return results

    # -- the engine contract ---------------------------------------------------------------------

    def generate(self, conversations: list[Conversation], params: GenParams) -> list[Completion]:
        return self._map(lambda k: self._reply(conversations[k], params, params.seed + k), len(conversations), "reply")

    def _sampling(self, params: GenParams, seed: int) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": seed,
        }

    def _reply(self, conversation: Conversation, params: GenParams, seed: int) -> Completion:
        prefill = conversation[-1]["role"] == "assistant"
        if self.raw_prompt or (prefill and self._plain):
            return self._reply_from_text(conversation, params, seed)
        extensions: dict[str, Any] = {}
        if params.repetition_penalty != 1.0:
            extensions["repetition_penalty"] = params.repetition_penalty
        if prefill:  # vllm continues the last assistant message instead of opening a new one
            extensions.update(continue_final_message=True, add_generation_prompt=False)
        sent = {} if self._plain else extensions
        body = {**self._sampling(params, seed), "messages": conversation, **sent, **self.extra_body}
        try:
            answer = self.servers.post("/chat/completions", body)
        except Rejected as err:
            if any(name in err.detail for name in sent):
                self._go_plain(err)  # other threads may have switched already; either way, try again plainly
                return self._reply(conversation, params, seed)
            return _error(f"the server rejected the request: {err}")
        except Failed as err:
            return _error(str(err))
        try:
            choice = answer["choices"][0]
            return self._completion(choice["message"].get("content"), choice.get("finish_reason"), answer)
        except (KeyError, IndexError, TypeError, AttributeError):
            return _error(f"unexpected answer from the server: {json.dumps(answer)[:200]}")

    def _completion(self, text: str | None, finish_reason: str | None, answer: dict) -> Completion:
        tokens = int((answer.get("usage") or {}).get("completion_tokens") or 0)
        with self._lock:
            self.generated_tokens += tokens
        return Completion(text=(text or "").strip(), finish_reason=_finish(finish_reason), tokens=tokens)

    def _go_plain(self, err: Rejected) -> None:
        with self._lock:
            if not self._plain:
                print(f"openai engine: the server does not take vllm's extra fields ({err.detail[:120]}); "
                      "repetition_penalty is not sent, and prefilled replies go through /v1/completions with "
                      "the chat template applied here", file=sys.stderr)
            self._plain = True

    def _reply_from_text(self, conversation: Conversation, params: GenParams, seed: int) -> Completion:
        # A raw prompt holds its own BOS token; vllm adds none when told so (an extension, dropped where rejected).
        no_bos = {"add_special_tokens": False} if self.raw_prompt and not self._plain else {}
        body = {**self._sampling(params, seed), "prompt": self.render(conversation), **no_bos, **self.extra_body}
        try:
            answer = self.servers.post("/completions", body)
            choice = answer["choices"][0]
            return self._completion(choice.get("text"), choice.get("finish_reason"), answer)
        except Rejected as err:
            if no_bos and "add_special_tokens" in err.detail:
                self._go_plain(err)
                return self._reply_from_text(conversation, params, seed)
            return _error(f"reply through /v1/completions failed: {err}")
        except Failed as err:
            return _error(f"reply through /v1/completions failed: {err}")
        except (KeyError, IndexError, TypeError):
            return _error("unexpected answer from the server's /v1/completions")

    def render(self, conversation: Conversation) -> str:
        """The chat-template text of a conversation, rendered here with the model's tokenizer (raw: the message)."""
        if self.raw_prompt:
            return conversation[-1]["content"]
        continuing = conversation[-1]["role"] == "assistant"
        return self._chat_tokenizer().apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=not continuing, continue_final_message=continuing
        )

    def _chat_tokenizer(self) -> Any:
        with self._tokenizer_lock:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                from cai_kit.core.models import resolve_model

                source = self.tokenizer_source or self.model_name
                try:
                    self._tokenizer = AutoTokenizer.from_pretrained(
                        resolve_model(source), trust_remote_code=self.trust_remote_code
                    )
                except (OSError, ValueError) as err:
                    raise UsageError(
                        f"engine 'openai': this needs the model's chat template here, and the tokenizer {source!r} "
                        f"could not be loaded ({str(err).splitlines()[0][:160]}); pass --engine-option tokenizer=PATH"
                    ) from None
            return self._tokenizer

    def logprobs(self, conversations: list[Conversation], continuations: list[str]) -> list[float]:
        prompts = [self.render(c) for c in conversations]
        return self._map(lambda k: self._score(prompts[k], continuations[k]), len(prompts), "score")

    def _score(self, prompt: str, continuation: str) -> float:
        """Prompt log-probs through /v1/completions with `echo` (vllm serve has them; most servers do not)."""
        body = {
            "model": self.model_name,
            "prompt": prompt + continuation,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": True,
            "logprobs": 1,
            **self.extra_body,
        }
        cannot = (
            f"engine 'openai': the server at {', '.join(self.servers.urls)} cannot score log-probs (needs echo + "
            "logprobs on /v1/completions, as `vllm serve` has); use --engine transformers or vllm for judging"
        )
        try:
            answer = self.servers.post("/completions", body)
        except (Rejected, Failed) as err:
            raise UsageError(f"{cannot} ({err})") from None
        choice = (answer.get("choices") or [{}])[0]
        logprobs = choice.get("logprobs") or {}
        offsets, values = logprobs.get("text_offset"), logprobs.get("token_logprobs")
        if not offsets or not values:
            raise UsageError(cannot)
        prompt_tokens = int((answer.get("usage") or {}).get("prompt_tokens") or len(values) - 1)
        total = 0.0
        for k in range(min(prompt_tokens, len(values))):
            end = offsets[k + 1] if k + 1 < len(offsets) else float("inf")
            if end > len(prompt) and values[k] is not None:  # the tokens of the continuation
                total += float(values[k])
        return total

    def close(self) -> None:
        self._tokenizer = None
