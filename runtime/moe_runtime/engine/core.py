"""TorchEngine: continuous batching over MoEForCausalLM in one worker thread.

Between decode steps the worker admits waiting requests (up to max_batch_size running), prefills each one alone
(reusing prefix-cache blocks), then decodes every running sequence together in one ragged batch. Events reach the
asyncio side through loop.call_soon_threadsafe, so the event loop never runs model code.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator

import torch

from moe_runtime.cache import PrefixCache
from moe_runtime.model.kv import SeqKV
from moe_runtime.model.load import LoadedModel

from .api import EngineStats, PromptTooLong, QueueFull, SamplingParams, TokenEvent, Usage
from .sampling import check_params, make_generator, sample

log = logging.getLogger(__name__)


@dataclass
class _Seq:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    gen: torch.Generator | None
    kv: SeqKV | None = None
    out: list[int] = field(default_factory=list)
    hit: int = 0
    cancelled: bool = False
    done: bool = False
    arrived: float = field(default_factory=time.monotonic)
    prefill_at: float | None = None  # perf_counter when its prefill began; None again once the first event said so


def _settle(fut: asyncio.Future, res, err) -> None:
    if not fut.done():
        fut.set_exception(err) if err is not None else fut.set_result(res)


class TorchEngine:
    def __init__(self, loaded: LoadedModel, *, model_name: str, max_batch_size: int = 16, max_queue: int = 64,
                 max_context_tokens: int = 4096, prefix_cache: PrefixCache | None = None):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.model_name = model_name
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_context_tokens = min(max_context_tokens, loaded.cfg.max_position_embeddings)
        self.cache = prefix_cache
        if prefix_cache is not None:  # a disk block of other shapes is then a miss, not a failed prefill
            prefix_cache.set_block_spec(self.model.kv_block_spec(prefix_cache.block_tokens))
        self.vocab = loaded.cfg.vocab_size
        self.eos = (
            {loaded.tokenizer.eos_token_id} if loaded.tokenizer and loaded.tokenizer.eos_token_id is not None else set()
        )
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._prefilling: list[_Seq] = []  # admitted this step, counted as running
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._tokens = {"prompt": 0, "cached_prompt": 0, "generated": 0}
        self._requests = {"ok": 0, "error": 0, "rejected": 0, "cancelled": 0}
        self._kv_bytes = 0
        self._step_s = 0.0  # EMA of decode step seconds
        self._step_batch = 1.0  # EMA of decode batch size
        self._req_s = 1.0  # EMA of request seconds (for retry_after)
        self._thread_done = True
        self._between: list[tuple] = []  # (fn, loop, future): run by the worker between two steps
        self._placement_lock: asyncio.Lock | None = None
        # the warm-up routes tokens through the shared counters and restores them; meanwhile readers get
        # ``_counts_hidden`` (the counts before it), so no report or /metrics scrape ever includes the warm-up
        self._counts_lock = threading.Lock()
        self._counts_hidden: torch.Tensor | None = None
        self._load_mark = self.model.expert_counts.clone()

    # ---- asyncio side ----
    async def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread_done = False
            self._thread = threading.Thread(target=self._work, name=f"engine-{self.model_name}", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30)
            self._thread = None
        if self.cache is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.cache.drain, 30)
        close = getattr(self.model.backend, "close", None)
        if close:
            close()

    async def generate(
        self, prompt_token_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[TokenEvent]:
        prompt = [int(t) for t in prompt_token_ids]
        if not prompt:
            raise ValueError("prompt is empty: at least one token is needed")
        bad = [t for t in prompt if not 0 <= t < self.vocab]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {self.vocab})")
        check_params(params, self.vocab)
        if len(prompt) + params.max_tokens > self.max_context_tokens:
            raise PromptTooLong(
                len(prompt),
                self.max_context_tokens,
                f"this model's maximum context length is {self.max_context_tokens} tokens; the request "
                f"asks for {len(prompt) + params.max_tokens} ({len(prompt)} prompt + {params.max_tokens} max_tokens)",
            )
        loop = asyncio.get_running_loop()
        seq = _Seq(request_id, prompt, params, loop, asyncio.Queue(), make_generator(params))
        with self._cond:
            free = max(0, self.max_batch_size - len(self._running) - len(self._prefilling))
            if len(self._waiting) >= self.max_queue + free:
                self._requests["rejected"] += 1
                wait = max(1.0, len(self._waiting) * self._req_s / self.max_batch_size)
                raise QueueFull(wait)
            self._waiting.append(seq)
            self._cond.notify_all()
        return self._stream(seq)

    async def _stream(self, seq: _Seq) -> AsyncIterator[TokenEvent]:
        try:
            while True:
                ev = await seq.queue.get()
                yield ev
                if ev.finished:
                    return
        finally:
            if not seq.done:
                with self._cond:
                    seq.cancelled = True
                    self._cond.notify_all()

    def stats(self) -> EngineStats:
        with self._cond:
            queue, running = len(self._waiting), len(self._running) + len(self._prefilling)
        disk = self.cache.disk if self.cache else None
        return EngineStats(
            queue_depth=queue, running=running, kv_cache_bytes=self._kv_bytes,
            prefix_cache_bytes=self.cache.bytes() if self.cache else {"memory": 0, "disk": 0},
            prefix_cache_disk_write_failures=disk.write_failures if disk else 0,
            prefix_cache_disk_bad_blocks={"corrupt": disk.corrupt, "foreign": disk.foreign} if disk else {},
            tokens=dict(self._tokens), requests=dict(self._requests),
            expert_tokens=self._expert_counts().tolist(),
            capacity_tokens_per_second=self.capacity_tokens_per_second(),
        )

    def expert_load(self) -> list[list[int]]:
        """Tokens routed to each expert [moe_layer][expert] since the previous call (or since start): the window
        the rebalancer decides on."""
        now = self._expert_counts()
        delta, self._load_mark = now - self._load_mark, now
        return delta.tolist()

    def _expert_counts(self) -> torch.Tensor:
        """A copy of the routed-token counters [moe_layer][expert] as the requests left them. The warm-up hides
        them (under the lock) before its first step and restores them (under the lock) after its last, so a reader
        that finds nothing hidden sees counters the warm-up has not touched yet or has already restored."""
        with self._counts_lock:
            hidden = self._counts_hidden
            return (hidden if hidden is not None else self.model.expert_counts).clone()

    async def apply_placement(self, placement) -> dict:
        """Move to another expert placement (contracts section 2 JSON) without stopping: new copies load while the
        old map serves, the routing table is swapped between two steps (no step mixes two maps; running sequences
        keep their KV cache), then copies no longer placed are freed. Returns {"loaded", "freed", "shards"
        (counts, copies summed over layers), "load_s", "swap_wait_s" (seconds)}. One apply at a time."""
        from moe_runtime.experts.placement import ExpertPlacement

        backend = self.model.backend
        if not hasattr(backend, "prepare"):
            raise ValueError("this engine runs its experts in-process (placement null); a live placement needs "
                             "expert shards: start it with a placement")
        # the model's shape is checked before the placement is expanded or built (issue 14 item 16)
        new = ExpertPlacement.parse(placement, model=(max(1, self.loaded.cfg.num_moe_layers),
                                                      self.loaded.cfg.num_experts))
        if self._placement_lock is None:
            self._placement_lock = asyncio.Lock()
        # shielded: once started, a move finishes (load, swap, free) even if the caller goes away
        return await asyncio.shield(self._apply(backend, new))

    async def _apply(self, backend, new) -> dict:
        loop = asyncio.get_running_loop()
        async with self._placement_lock:
            t0 = time.monotonic()
            staged = await loop.run_in_executor(None, backend.prepare, new)
            t1 = time.monotonic()
            try:
                await self._run_between_steps(lambda: backend.commit(staged))
            except Exception:
                await loop.run_in_executor(None, backend.abort, staged)
                raise
            t2 = time.monotonic()
            await loop.run_in_executor(None, backend.release, staged)
        log.info(
            "placement applied: %d copies loaded, %d freed, %d shards", staged.loaded, staged.freed, len(new.shards)
        )
        return {"loaded": staged.loaded, "freed": staged.freed, "shards": len(new.shards),
                "load_s": t1 - t0, "swap_wait_s": t2 - t1}

    async def _run_between_steps(self, fn):
        """Run fn in the worker thread between two steps (directly when the worker is not running)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cond:
            if self._thread is None or self._thread_done:
                return fn()
            self._between.append((fn, loop, fut))
            self._cond.notify_all()
        return await fut

    def _run_between(self) -> None:
        """Worker thread, holding self._cond, no step in progress."""
        jobs, self._between = self._between, []
        for fn, loop, fut in jobs:
            try:
                res, err = fn(), None
            except Exception as e:
                res, err = None, e
            try:
                loop.call_soon_threadsafe(_settle, fut, res, err)
            except RuntimeError:  # the caller's loop is closed
                pass

    def capacity_tokens_per_second(self) -> float:
        """Generated tokens/s at the decode batch size seen so far (EMA of step time / batch size). A lower bound
        for a fuller batch: small-batch decode is bound by reading weights, so step time grows slower than batch."""
        if self._step_s <= 0:
            return 0.0
        return max(1.0, self._step_batch) / self._step_s

    # ---- worker thread ----
    def _emit(self, seq: _Seq, ev: TokenEvent) -> None:
        if ev.finished:
            seq.done = True
        if seq.prefill_at is not None:  # the sequence's first event (a token, or its end): how long ago prefill began
            ev.prefill_s, seq.prefill_at = time.perf_counter() - seq.prefill_at, None
        try:
            seq.loop.call_soon_threadsafe(seq.queue.put_nowait, ev)
        except RuntimeError:  # the client's loop is closed
            seq.cancelled = True

    def _usage(self, seq: _Seq) -> Usage:
        return Usage(len(seq.prompt), len(seq.out), seq.hit, len(seq.prompt) - seq.hit)

    def _finish(self, seq: _Seq, reason: str, token: int | None, error: str | None = None) -> None:
        self._requests[{"stop": "ok", "length": "ok"}.get(reason, reason)] += 1
        self._emit(seq, TokenEvent(token, True, reason, self._usage(seq), error))
        seq.kv = None
        self._req_s = 0.9 * self._req_s + 0.1 * (time.monotonic() - seq.arrived)

    def _accept(self, seq: _Seq, token: int) -> bool:
        """Record a sampled token; emit it; True when the sequence is finished."""
        seq.out.append(token)
        self._tokens["generated"] += 1
        if token in self.eos or token in seq.params.stop_token_ids:
            self._finish(seq, "stop", None)
            return True
        if len(seq.out) >= seq.params.max_tokens or len(seq.prompt) + len(seq.out) >= self.max_context_tokens:
            self._finish(seq, "length", token)
            return True
        self._emit(seq, TokenEvent(token, False, None))
        return False

    def _prefill(self, seq: _Seq) -> None:
        seq.prefill_at = time.perf_counter()
        kv = self.model.new_kv()
        keys: list[str] = []
        if self.cache is not None:
            keys, blocks = self.cache.lookup(seq.prompt)
            for b in blocks:
                kv.extend([(k.to(self.model.device), v.to(self.model.device)) for k, v in b])
            seq.hit = len(blocks) * self.cache.block_tokens
        seq.kv = kv
        logits = self.model([seq.prompt[seq.hit:]], [kv])[0]
        self._tokens["prompt"] += len(seq.prompt) - seq.hit
        self._tokens["cached_prompt"] += seq.hit
        if self.cache is not None:
            bt = self.cache.block_tokens
            for i, key in enumerate(keys):
                if (i + 1) * bt > seq.hit and not self.cache.has(key):
                    self.cache.store(key, [(k.cpu(), v.cpu()) for k, v in kv.export(i * bt, (i + 1) * bt)])
        if not self._accept(seq, sample(logits, seq.params, seq.gen)):
            self._running.append(seq)

    def _fail(self, seq: _Seq, exc: BaseException) -> None:
        """Finish one sequence with an error: the batch around it goes on."""
        log.error("request %s failed: %s: %s", seq.request_id, type(exc).__name__, exc, exc_info=exc)
        if not seq.done:
            self._finish(seq, "error", None, f"{type(exc).__name__}: {exc}")

    def _prefill_each(self, admit: list[_Seq]) -> None:
        """Prefill the admitted sequences one by one; one that fails (a bad cache block, its prompt's OOM) is
        finished with an error and the others are admitted."""
        for s in admit:
            try:
                self._prefill(s)
            except Exception as e:  # noqa: BLE001 (the sequence's own failure)
                self._fail(s, e)

    def _forward_each(self, batch: list[_Seq], lengths: list[int]) -> list[torch.Tensor | None]:
        """After a failed batched decode: undo its partial KV appends, then decode each sequence alone so that the
        one that breaks the forward fails alone (None in its row)."""
        rows: list[torch.Tensor | None] = []
        for s, n in zip(batch, lengths):
            s.kv.truncate(n)
        for s, n in zip(batch, lengths):
            try:
                rows.append(self.model([[s.out[-1]]], [s.kv])[0])
            except Exception as e:  # noqa: BLE001
                s.kv.truncate(n)
                self._fail(s, e)
                rows.append(None)
        return rows

    def _decode(self) -> None:
        batch = self._running
        t0 = time.monotonic()
        lengths = [s.kv.length for s in batch]
        try:
            rows = list(self.model([[s.out[-1]] for s in batch], [s.kv for s in batch]))
        except Exception:  # noqa: BLE001 (find the sequence that causes it)
            log.warning("batched decode of %d sequences failed; decoding them one by one", len(batch), exc_info=True)
            rows = self._forward_each(batch, lengths)
        dt = time.monotonic() - t0
        self._step_s = dt if self._step_s == 0 else 0.8 * self._step_s + 0.2 * dt
        self._step_batch = 0.8 * self._step_batch + 0.2 * len(batch)
        keep = []
        for s, row in zip(batch, rows):
            if row is None:
                continue
            try:
                token = sample(row, s.params, s.gen)
            except Exception as e:  # noqa: BLE001 (this request's sampling, e.g. bad probabilities)
                self._fail(s, e)
                continue
            if not self._accept(s, token):
                keep.append(s)
        self._running = keep

    def _warmup(self) -> None:
        """One short prefill + decode so the first request does not pay one-time kernel set-up, and the capacity
        estimate has a measured step time from the start. Routed-token counters are restored afterwards."""
        counts = self.model.expert_counts.clone()
        with self._counts_lock:
            self._counts_hidden = counts
        try:
            kv = self.model.new_kv()
            self.model([[1] * 8], [kv])
            for _ in range(3):
                t0 = time.monotonic()
                self.model([[1]], [kv])
                self._step_s = time.monotonic() - t0
        except Exception:  # a broken model shows up on the first request with a clear error event
            log.exception("engine warm-up failed")
        finally:
            with self._counts_lock:
                self.model.expert_counts.copy_(counts)
                self._counts_hidden = None

    def _work(self) -> None:
        torch.set_grad_enabled(False)
        self._warmup()
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._running and not self._between:
                    self._cond.wait(0.5)
                if self._between:
                    self._run_between()
                if self._stopping:
                    pending = list(self._waiting) + self._running
                    self._waiting.clear()
                    self._running = []
                    break
                for s in [s for s in self._running if s.cancelled]:
                    self._requests["cancelled"] += 1
                    s.done, s.kv = True, None
                self._running = [s for s in self._running if not s.cancelled]
                admit = []
                while self._waiting and len(self._running) + len(admit) < self.max_batch_size:
                    s = self._waiting.popleft()
                    if s.cancelled:
                        self._requests["cancelled"] += 1
                        s.done = True
                    else:
                        admit.append(s)
                self._prefilling = admit
            try:
                self._prefill_each(admit)
                with self._cond:
                    self._prefilling = []
                if self._running:
                    self._decode()
            except Exception as e:  # not one sequence's failure (those are handled above): fail the step's
                log.exception("engine step failed")
                for s in admit + self._running:
                    if not s.done:
                        self._finish(s, "error", None, f"{type(e).__name__}: {e}")
                self._running = []
                with self._cond:
                    self._prefilling = []
            self._kv_bytes = sum(s.kv.nbytes() for s in self._running if s.kv is not None)
        for s in pending:
            if not s.done:
                self._finish(s, "cancelled", None, "engine stopped")
        with self._cond:  # a swap queued while stopping: no step runs any more, so it is safe to run it now
            self._thread_done = True
            self._run_between()
