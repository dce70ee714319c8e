"""A small OpenAI-compatible chat-completions client (standard library only).

It talks to any server that implements ``POST {base_url}/chat/completions`` with the OpenAI
request/response JSON: OpenAI itself, a local vLLM (``vllm serve ... --port 8000`` gives
``http://127.0.0.1:8000/v1``), llama.cpp's ``llama-server`` (``http://127.0.0.1:8080/v1``),
Ollama (``http://127.0.0.1:11434/v1``), ...

Configuration (:class:`LLMConfig`): base URL, model name and API key come from a YAML file
(``configs/negation/llm.yaml``), from ``--set``-style overrides, or from the environment:
``MLRKIT_LLM_BASE_URL`` (else ``OPENAI_BASE_URL``), ``MLRKIT_LLM_MODEL``, ``MLRKIT_LLM_API_KEY``
(else ``OPENAI_API_KEY``; local servers usually need none).

Every request is bounded: a total deadline per attempt (a server that trickles bytes cannot stretch
it; the connection's own socket waits count against it), at most ``max_retries`` retries with
exponential back-off (``backoff * 2**attempt``, capped at ``max_backoff``; a ``Retry-After``
header is honoured up to the same cap). Retried: time-outs, connection errors, HTTP 408/409/429/5xx
and malformed replies (a body that is not JSON, or has no ``choices[0].message.content`` string).
Other HTTP errors (400, 401, 404...) fail at once. Nothing is dropped silently: every outcome is
counted in :class:`ChatStats` (``client.stats``), and a request that finally fails returns ``None``
so the caller can count the item it was for.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mlrkit.errors import ConfigError

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass
class LLMConfig:
    """Where and how to reach a chat-completions server.

    Attributes:
        base_url: API root, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended).
        model: model name the server knows (vLLM: the served model name).
        api_key: sent as ``Authorization: Bearer <key>`` when set.
        timeout: seconds per attempt, in total (connect + reading the whole reply).
        max_retries: retries after the first attempt (so at most ``1 + max_retries`` requests).
        backoff: first back-off in seconds; doubles per retry.
        max_backoff: cap of one back-off (and of a server's ``Retry-After``).
        temperature, max_tokens: sampling parameters sent with every request.
        use_env_proxy: honour ``http_proxy``/``https_proxy`` from the environment (off: direct).
    """

    base_url: str = ""
    model: str = ""
    api_key: str | None = None
    timeout: float = 60.0
    max_retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 30.0
    temperature: float = 0.0
    max_tokens: int = 64
    use_env_proxy: bool = True

    @classmethod
    def resolve(cls, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                env: Mapping[str, str] | None = None) -> LLMConfig:
        """Defaults < YAML file ``path`` (its ``llm:`` section or the whole file) < environment < overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if path is not None:
            import yaml

            p = Path(path)
            try:
                doc = yaml.safe_load(p.read_text()) or {}
            except (OSError, yaml.YAMLError) as e:
                raise ConfigError(f"cannot read LLM config {p}: {e}") from None
            section = doc.get("llm", doc) if isinstance(doc, dict) else None
            if not isinstance(section, dict):
                raise ConfigError(f"{p}: an LLM config must be a mapping (optionally under 'llm:')")
            values.update(section)
        for key, names in (("base_url", ("MLRKIT_LLM_BASE_URL", "OPENAI_BASE_URL")),
                           ("model", ("MLRKIT_LLM_MODEL",)),
                           ("api_key", ("MLRKIT_LLM_API_KEY", "OPENAI_API_KEY"))):
            for name in names:
                if env.get(name):
                    values[key] = env[name]
                    break
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown LLM config keys {unknown} (known: {sorted(known)})")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not self.base_url or not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"LLM base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {self.base_url!r} "
                "(set llm.base_url in the config, --llm-base-url or MLRKIT_LLM_BASE_URL)")
        if not self.model:
            raise ConfigError("LLM model name missing (llm.model, --llm-model or MLRKIT_LLM_MODEL)")
        if self.timeout <= 0 or self.max_retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ConfigError(f"LLM timeout must be > 0 and retries/back-off >= 0, got {self.public()}")

    def public(self) -> dict[str, Any]:
        """The config without the API key (for reports and logs)."""
        d = asdict(self)
        d["api_key"] = "***" if self.api_key else None
        return d


@dataclass
class ChatStats:
    """Counts of what happened to the requests (every attempt and every final outcome)."""

    calls: int = 0  # complete() calls
    attempts: int = 0  # HTTP requests sent
    ok: int = 0  # calls that returned text
    failed: int = 0  # calls that returned None after all attempts
    retries: int = 0
    timeouts: int = 0
    connection_errors: int = 0
    http_errors: dict[str, int] = field(default_factory=dict)  # status -> count
    malformed: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_until(resp: Any, deadline: float, timeout: float) -> bytes:
    """The response body, read in pieces; a server that trickles bytes cannot keep the attempt going past
    ``deadline`` (each socket wait is cut to the time left; TimeoutError when it runs out)."""
    sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete reply within {timeout}s")
        if sock is not None:
            sock.settimeout(left)
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class ChatClient:
    """``complete(messages) -> str | None`` against an OpenAI-compatible server (module docstring)."""

    def __init__(self, config: LLMConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        config.validate()
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.stats = ChatStats()
        self._sleep = sleep
        handlers: list[Any] = [] if config.use_env_proxy else [urllib.request.ProxyHandler({})]
        self._opener = urllib.request.build_opener(*handlers)

    # ------------------------------------------------------------------ one attempt
    def _post(self, body: bytes) -> tuple[int, bytes, str | None]:
        """(status, body, Retry-After) of one POST; raises TimeoutError / OSError on transport failures."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        deadline = time.monotonic() + self.config.timeout  # the whole attempt, not each socket read
        try:
            with self._opener.open(req, timeout=self.config.timeout) as resp:
                return resp.status, _read_until(resp, deadline, self.config.timeout), resp.headers.get("Retry-After")
        except urllib.error.HTTPError as e:
            with e:
                payload = e.read() if e.fp is not None else b""
            return e.code, payload, e.headers.get("Retry-After") if e.headers else None

    @staticmethod
    def parse_reply(raw: bytes) -> str:
        """The assistant's text of a chat-completions reply; ``ValueError`` when malformed."""
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"reply is not JSON ({e}): {raw[:80]!r}") from None
        try:
            content = doc["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"reply has no choices[0].message.content: {str(doc)[:120]}") from None
        if not isinstance(content, str):
            raise ValueError(f"choices[0].message.content is {type(content).__name__}, not a string")
        return content

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        delay = self.config.backoff * (2 ** attempt)
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass  # an HTTP-date Retry-After: keep the exponential delay
        self._sleep(min(delay, self.config.max_backoff))

    # ------------------------------------------------------------------ public
    def complete(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> str | None:
        """Send one chat request; the reply's text, or ``None`` after all attempts failed (counted)."""
        payload = {"model": self.config.model, "messages": list(messages),
                   "temperature": self.config.temperature, "max_tokens": self.config.max_tokens, **params}
        body = json.dumps(payload).encode("utf-8")
        self.stats.calls += 1
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self.stats.retries += 1
            self.stats.attempts += 1
            retry_after = None
            try:
                status, raw, retry_after = self._post(body)
            except TimeoutError:
                self.stats.timeouts += 1
                self.stats.last_error = f"timeout after {self.config.timeout}s"
            except (urllib.error.URLError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                if isinstance(reason, TimeoutError):
                    self.stats.timeouts += 1
                    self.stats.last_error = f"timeout after {self.config.timeout}s"
                else:
                    self.stats.connection_errors += 1
                    self.stats.last_error = f"connection error: {reason}"
            else:
                if status == 200:
                    try:
                        text = self.parse_reply(raw)
                    except ValueError as e:
                        self.stats.malformed += 1
                        self.stats.last_error = f"malformed reply: {e}"
                    else:
                        self.stats.ok += 1
                        return text
                else:
                    key = str(status)
                    self.stats.http_errors[key] = self.stats.http_errors.get(key, 0) + 1
                    self.stats.last_error = f"HTTP {status}: {raw[:120]!r}"
                    if status not in RETRY_STATUS:
                        break
            if attempt < self.config.max_retries:
                self._wait(attempt, retry_after)
        self.stats.failed += 1
        return None


def image_data_url(image: Any) -> str:
    """A PIL image as a ``data:image/png;base64,...`` URL (OpenAI's image-input message format)."""
    import base64
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
