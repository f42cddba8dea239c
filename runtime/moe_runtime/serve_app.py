"""The torch engine's Ray Serve application (docs/contracts.md section 3).

``app_builder(args)`` is the ``import_path`` the operator renders into serveConfigV2: ``args`` is a
RuntimeConfig; the app is one ``engine-<pool>`` deployment per pool (each replica holds an engine built with
``build_engine``) behind the ``OpenAIIngress`` deployment, which serves ``server.build_http_app`` over a
``RemoteEngine`` that routes each request to one replica of any pool (``moe_runtime.routing``: the request's
dollars there, with the prompt blocks the replica holds priced at the cached rate; ``serve_router.HintRouter``
makes Serve honour the choice) and streams its tokens back. With every pool at zero it holds the request up to
``wake_deadline_s`` and exports it as ``moe_router_waiting_requests`` (the autoscaler's demand to wake for).

Live expert placement (docs/contracts.md section 7): every engine replica runs a ``placement_board.BoardReporter``
against the app's placement board actor; the ingress mounts the admin API (``admin_api``) over a
``placement_board.BoardClient`` and exports ``moe_ready_replicas`` from it.
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import asdict
from typing import Any, AsyncIterator

from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from moe_runtime import serve_router
from moe_runtime.checkpoint.tokenizer import ModelTokenizer
from moe_runtime.config import RuntimeConfig
from moe_runtime.drain import drain_timeout_s
from moe_runtime.engine.api import (EngineStats, NoReplicaReady, PromptTooLong, QueueFull, SamplingParams,
                                    TokenEvent)
from moe_runtime.metrics import RuntimeMetrics, merge_stats
from moe_runtime.placement_board import BoardClient, BoardReporter, config_key, get_board
from moe_runtime.routing import (ArrivalWindow, InterferenceLedger, PrefixIndex, Replica, Weights, block_hashes,
                                 decode_step_s, predicted_tpot, prefill_rate, rank, tpot_slack_s)

STALE_SNAPSHOT_S = 60.0  # a replica silent this long is retired: its gauges stop adding, its counters stay
METRICS_TTL_S = 1.0  # a /metrics scrape within this long of the last collection is answered from it, seconds
MAX_RETIRED = 64  # retired replicas whose counters are kept by id (one that answers again is not counted twice)
HANDLE_QUEUE = 16  # requests Serve may queue per engine deployment when every replica is at max_ongoing (-> 429)
INGRESS_MAX_ONGOING = 1024  # concurrent HTTP requests per ingress replica; the proxy answers 503 beyond
DEFAULT_CACHE_BLOCKS = 4096  # the router index's blocks per replica when the engine does not say its cache size
HINT_ROUTER = "moe_runtime.serve_router:HintRouter"  # the engine deployments' Serve request router
SNAPSHOT_S = 5.0  # the longest /metrics waits for a replica's snapshot
DESCRIBE_S = 10.0  # how long the ingress waits at start for a replica to describe the model (else: lazily)
PRIME_S = 2.0  # how long the ingress's first call to a pool waits (it only makes Serve start that pool's router)


def _tokenizer_json(tokenizer: Any) -> str:
    """The tokenizer as tokenizer.json text, whether it is a ``tokenizers.Tokenizer`` or wraps one."""
    for obj in (tokenizer, getattr(tokenizer, "tokenizer", None), getattr(tokenizer, "_tokenizer", None)):
        to_str = getattr(obj, "to_str", None)
        if to_str is not None:
            return to_str()
    raise TypeError(f"cannot serialise tokenizer of type {type(tokenizer).__name__}")


@serve.deployment(name="engine")   # graceful_shutdown_timeout_s: engine_deployment_options (drain.py)
class EngineDeployment:
    """One replica of a pool: an engine (and, per placement, its expert-shard actors)."""

    async def __init__(self, config: dict[str, Any], pool: str | None = None, board_key: str | None = None):
        from moe_runtime.engine import build_engine

        self.config = RuntimeConfig.model_validate(config)
        self.engine = build_engine(self.config)
        await self.engine.start()
        self.reporter: BoardReporter | None = None
        try:
            ctx = serve.get_replica_context()
        except Exception:  # outside a replica (direct instantiation in tests)
            ctx = None
        self.replica = ctx.replica_tag if ctx is not None else "local"
        if ctx is not None and pool is not None and board_key is not None:
            initial = self.config.placement.to_json() if self.config.placement is not None else None
            app = ctx.app_name
            self.reporter = BoardReporter(self.engine, pool, self.replica, board_key, lambda: get_board(app), initial)
            self.reporter.start()

    async def generate(self, prompt_ids: list[int], params: dict[str, Any], request_id: str,
                       route_to: str | None = None):
        """Stream: one admission dict (accepted or rejected), then the engine's TokenEvents. ``route_to`` is the
        replica the ingress chose (read by ``serve_router.HintRouter`` before the call reaches a replica)."""
        try:
            stream = await self.engine.generate(prompt_ids, SamplingParams(**params), request_id)
        except QueueFull as exc:
            yield {"rejected": "queue_full", "retry_after_s": exc.retry_after_s, "message": str(exc)}
            return
        except PromptTooLong as exc:
            yield {"rejected": "prompt_too_long", "prompt_tokens": exc.prompt_tokens,
                   "max_context_tokens": exc.max_context_tokens, "message": str(exc)}
            return
        yield {"accepted": True, "replica": self.replica}
        try:
            async for event in stream:
                yield event
        finally:  # the ingress cancelled us (client gone) or the stream ended
            await stream.aclose()

    def snapshot(self) -> dict[str, Any]:
        return {"replica": self.replica, "stats": asdict(self.engine.stats()), "time": time.time()}

    async def apply_placement(self, placement: dict[str, Any]) -> dict[str, Any]:
        """Live expert rebalance of this replica's shards (docs/placement.md); each replica owns its shards,
        so a rebalancer calls every replica of the pool."""
        return await self.engine.apply_placement(placement)

    def describe(self) -> dict[str, Any]:
        tok = self.engine.tokenizer
        return {"model_name": self.engine.model_name, "max_context_tokens": self.engine.max_context_tokens,
                "tokenizer_json": _tokenizer_json(tok), "eos_token_id": getattr(tok, "eos_token_id", None),
                "chat_template": getattr(tok, "chat_template", None), "bos_token": getattr(tok, "bos_token", None),
                "eos_token": getattr(tok, "eos_token", None),
                "num_moe_layers": max(1, self.engine.loaded.cfg.num_moe_layers),
                "num_experts": self.engine.loaded.cfg.num_experts,
                "cache_blocks": self._cache_blocks()}

    def _cache_blocks(self) -> int | None:
        """Prompt blocks this replica's prefix cache holds at most (memory and disk tiers), for the router's
        index; None when the engine keeps no prefix cache."""
        cache, model = getattr(self.engine, "cache", None), getattr(self.engine, "model", None)
        if cache is None or model is None:
            return None
        spec = model.kv_block_spec(cache.block_tokens)
        import math

        block_bytes = sum(math.prod(shape) * (2 if "16" in dtype else 4) for dtype, shape in spec)
        budget = self.config.cache.memory_bytes + (self.config.cache.disk_bytes if self.config.cache.disk_dir else 0)
        return max(1, budget // max(1, block_bytes))

    async def __del__(self):
        if self.reporter is not None:
            await self.reporter.stop()
        await self.engine.stop()


class _RemoteStream:
    """Async iterator over one engine replica's TokenEvents; ``aclose`` cancels the remote sequence.
    ``first`` runs once, at the first token or the end (the request's prefill is no longer pending)."""

    def __init__(self, pool: str, gen, done, first=None):
        self.pool, self._gen, self._done, self._closed = pool, gen, done, False
        self._first = first

    def __aiter__(self):
        return self

    async def __anext__(self) -> TokenEvent:
        if self._closed:
            raise StopAsyncIteration
        try:
            event = await self._gen.__anext__()
        except StopAsyncIteration:
            self._finish()
            raise
        self._prefilled()
        return event

    def _prefilled(self) -> None:
        if self._first is not None:
            first, self._first = self._first, None
            first()

    def _finish(self) -> None:
        self._prefilled()
        if not self._closed:
            self._closed = True
            self._done()

    async def aclose(self) -> None:
        if not self._closed:
            self._gen.cancel()
            self._finish()

    def __del__(self):
        # the last guard against a stream nobody closed (a response that never started): its replica's load
        # and prefill would otherwise stay counted in the router for good
        if not self._closed:
            try:
                self._gen.cancel()
            except Exception:  # noqa: BLE001 (interpreter shutdown, a gone actor: nothing left to cancel)
                pass
            self._finish()


class RemoteEngine:
    """``AsyncEngine`` over the ``engine-<pool>`` deployments, as seen from the ingress."""

    def __init__(self, handles: dict[str, DeploymentHandle], info: dict[str, Any],
                 cfg: RuntimeConfig | None = None, app: str | None = None):
        cfg = cfg or RuntimeConfig(model_name=info["model_name"], model_source="-")
        self.handles = handles
        self.app = app  # the Serve app (None outside Serve: no replica set is known, Serve picks replicas)
        self.model_name: str = info["model_name"] if info else cfg.model_name
        self.max_context_tokens: int = info["max_context_tokens"] if info else cfg.max_context_tokens
        self.tokenizer: ModelTokenizer | None = None  # None until a replica described the model (wait_ready)
        self.on_info: list = []  # callbacks(info) run when the model's facts arrive
        self.inflight = {p: 0 for p in handles}
        # routing (moe_runtime.routing): prices, this router's in-flight count per replica, its prefix index
        r = cfg.routing
        plain = r is not None and r.policy == "least-loaded"
        self.weights = Weights(r.prompt_weight, r.cached_prompt_weight) if r is not None else Weights()
        self.price = {p: (r.dollars_per_work.get(p, 1.0) if r is not None and not plain else 1.0) for p in handles}
        self.prefill_tps = {p: (r.prefill_tps.get(p, math.inf) if r is not None else math.inf) for p in handles}
        self.ttft_target_s = r.ttft_target_s if r is not None and not plain else None
        self.tpot_target_s = r.tpot_target_s if r is not None and not plain else None
        self.decode_tps = {p: (r.decode_tps.get(p, math.inf) if r is not None else math.inf) for p in handles}
        self.chunk_tokens = r.prefill_chunk_tokens if r is not None else 0
        self.sent = ArrivalWindow()  # prompt tokens sent to each replica: its prefill arrival rate
        self.pending_prefill: dict[str, float] = {}  # replica -> prompt tokens routed there, not prefilled yet
        self.ledger = InterferenceLedger()  # the TPOT slack of the requests in flight on each replica
        self.slots, self.limit = cfg.max_batch_size, cfg.max_batch_size + cfg.max_queue
        self.block_tokens = cfg.cache.block_tokens if cfg.cache.prefix and not plain else 0
        self.index = PrefixIndex(DEFAULT_CACHE_BLOCKS)
        self.replica_load: dict[str, int] = {}
        self.wake_deadline_s = cfg.wake_deadline_s
        self.wake_queue = max(16, cfg.max_queue)  # requests held at zero replicas at most; more get 503 at once
        self.waiting = 0
        self.routed: dict[str, int] = {p: 0 for p in handles}
        self.blocks = {"hit": 0, "miss": 0}
        self._snaps: dict[str, dict[str, tuple[EngineStats, float]]] = {p: {} for p in handles}  # live replicas
        # pool -> replica id -> counters of a retired replica ("" = the oldest ones, summed): bounded by MAX_RETIRED
        self._retired: dict[str, dict[str, EngineStats]] = {}
        self.front_rejections: dict[str, int] = {p: 0 for p in handles}
        # how complete and how quick /metrics' collections are, exported beside them: snapshot calls a pool left
        # unanswered within SNAPSHOT_S (its figures are then partly stale), and the last collection's duration
        self.snapshot_timeouts: dict[str, int] = {p: 0 for p in handles}
        self.collection_seconds: float | None = None
        self._collection: asyncio.Future | None = None  # the last (or in-flight) stats collection
        self._collected_at = float("-inf")  # monotonic time the last collection started
        if info:
            self._learn(info)

    def _learn(self, info: dict[str, Any]) -> None:
        """The model's facts from a replica's ``describe``: the tokenizer, the context, the cache's size."""
        self.model_name, self.max_context_tokens = info["model_name"], info["max_context_tokens"]
        self.tokenizer = ModelTokenizer.from_info(info)
        self.index = PrefixIndex(int(info.get("cache_blocks") or DEFAULT_CACHE_BLOCKS))
        for callback in self.on_info:
            callback(info)

    async def wait_ready(self) -> None:
        """Before a request is tokenized: the model's facts, from a replica. An ingress that started while every
        pool was at zero learns them here, after holding the request for a replica (``_wait_for_a_replica``)."""
        if self.tokenizer is not None:
            return
        live = await self._wait_for_a_replica()
        pools = [p for p, ids in live.items() if ids] or [p for p, ids in live.items() if ids is None]
        resp = self.handles[pools[0]].describe.remote()
        try:
            info = await asyncio.wait_for(asyncio.shield(resp), self.wake_deadline_s)
        except asyncio.TimeoutError:
            resp.cancel()
            wait = self.wake_deadline_s
            raise NoReplicaReady(wait / 2, f"no replica described the model within {wait:.0f} s; "
                                 f"retry after {wait / 2:.0f} s") from None
        if self.tokenizer is None:
            self._learn(info)

    async def start(self) -> None:  # the engines start in their own replicas
        return None

    async def stop(self) -> None:
        return None

    def _order(self) -> list[str]:
        """Pools, least loaded first: in-flight requests per known replica."""
        return sorted(self.handles, key=lambda p: self.inflight[p] / max(1, len(self._snaps[p])))

    def _live(self) -> dict[str, list[str] | None]:
        """Per pool, the running replicas Serve's router knows (None: not known yet, or outside Serve)."""
        return {p: serve_router.live_replicas(self.app, f"engine-{p}") if self.app else None for p in self.handles}

    async def prime(self) -> None:
        """Make Serve start each pool's router now (one call per pool, given up after PRIME_S), so the ingress
        knows every pool's replicas, and a pool at zero, before the first request needs it."""
        async def one(pool: str) -> None:
            resp = self.handles[pool].snapshot.remote()
            try:
                await asyncio.wait_for(asyncio.shield(resp), PRIME_S)
            except BaseException:  # noqa: BLE001 (at zero replicas the call waits: it has done its job)
                resp.cancel()

        await asyncio.gather(*(one(p) for p in self.handles), return_exceptions=True)

    async def _wait_for_a_replica(self) -> dict[str, list[str] | None]:
        """The pools' replicas; when every pool is known to be at zero, hold the request (one of at most
        ``wake_queue``) until a replica is ready or ``wake_deadline_s`` passes (NoReplicaReady: HTTP 503)."""
        live = self._live()
        if any(ids is None or ids for ids in live.values()):
            return live
        if self.waiting >= self.wake_queue:
            raise NoReplicaReady(self.wake_deadline_s, f"no replica is ready and {self.waiting} requests already "
                                 f"wait for one; retry after {self.wake_deadline_s:.0f} s")
        self.waiting += 1
        end = time.monotonic() + self.wake_deadline_s
        try:
            while not any(ids is None or ids for ids in live.values()):
                left = end - time.monotonic()
                if left <= 0:
                    raise NoReplicaReady(self.wake_deadline_s / 2, "no replica became ready within "
                                         f"{self.wake_deadline_s:.0f} s (the deployment is waking from zero); "
                                         f"retry after {self.wake_deadline_s / 2:.0f} s")
                await serve_router.wait_for_change(min(1.0, left))
                live = self._live()
            return live
        finally:
            self.waiting -= 1

    def _attempts(self, live: dict[str, list[str] | None], prompt_token_ids: list[int],
                  params: SamplingParams) -> tuple[list[tuple[str, str | None]], list, dict[str, float | None]]:
        """(pool, replica or None) in the order to try, the prompt's block hashes, and the request's TPOT slack
        on each ranked replica: the ranked replicas of the pools whose replicas are known, then one plain call to
        each pool whose set is not known yet."""
        hashes = block_hashes(prompt_token_ids, self.block_tokens) if self.block_tokens else []
        now, n_out = time.monotonic(), max(1, int(params.max_tokens))
        ids_known = [rid for ids in live.values() for rid in ids or ()]
        matched = self.index.match(hashes, ids_known) if hashes else {}
        n_prompt = len(prompt_token_ids)
        reps, slack = [], {}
        for p, ids in live.items():
            for rid in ids or ():
                load = self.replica_load.get(rid, 0)
                step = decode_step_s(load + 1, self.slots, self.decode_tps[p])
                # the client's max_tokens stands for the output: the slack is an upper bound when it asks for
                # more than it gets (docs/routing.md); its prefill there, as the sequences decoding feel it
                slack[rid] = tpot_slack_s(n_out, decode_step_s(self.slots, self.slots, self.decode_tps[p]),
                                          self.tpot_target_s)   # at a full batch: it may fill meanwhile
                held = min(matched.get(rid, 0) * max(1, self.block_tokens), max(0, n_prompt - 1))
                prefill_s = (n_prompt - held) / self.prefill_tps[p] if self.prefill_tps[p] > 0 else 0.0
                # prompts sent there over one decode life of this request, this one's included: its prefill
                # stretches the others' steps (their TPOT), spread over at least the TTFT target
                window = max(n_out * step, self.ttft_target_s or 0.0)
                rate = self.sent.rate(rid, now, window) + len(prompt_token_ids) / window if window > 0 else 0.0
                # its queue prefills at the rate its decode batch leaves (the load stands for the batch)
                busy = decode_step_s(load, self.slots, self.decode_tps[p]) if load else 0.0
                reps.append(Replica(id=rid, pool=p, load=load, slots=self.slots, limit=self.limit,
                                    dollars_per_work=self.price[p],
                                    prefill_tps=prefill_rate(self.prefill_tps[p], busy, self.chunk_tokens),
                                    pending_prefill=self.pending_prefill.get(rid, 0.0),
                                    tpot_s=predicted_tpot(step, rate, self.prefill_tps[p], self.chunk_tokens)
                                    if n_out > 1 else 0.0,   # one token has no TPOT
                                    breaks=self.ledger.breaks(rid, prefill_s) if self.tpot_target_s else 0))
        order = rank(reps, matched, prompt_tokens=len(prompt_token_ids), output_tokens=int(params.max_tokens),
                     block_tokens=max(1, self.block_tokens), weights=self.weights, ttft_target_s=self.ttft_target_s,
                     tpot_target_s=self.tpot_target_s,
                     affinity_key=hashes[0] if hashes else _whole_prompt_key(prompt_token_ids))
        return ([(r.pool, r.id) for r in order] + [(p, None) for p, ids in live.items() if ids is None], hashes,
                slack)

    def _admitted(self, pool: str, replica: str, hashes: list, prompt_tokens: int, ticket: object = None,
                  slack_s: float | None = None) -> float:
        """Count an admitted request; returns the prompt tokens it will prefill there (pending until its first
        token). Its load was counted when it was routed; its prefill stretches the requests decoding there
        and it is in flight with ``slack_s`` until its stream ends (``InterferenceLedger``)."""
        self.routed[pool] = self.routed.get(pool, 0) + 1
        held = 0
        if hashes:
            held = self.index.match(hashes, [replica])[replica]
            self.blocks["hit"] += held
            self.blocks["miss"] += len(hashes) - held
            self.index.record(replica, hashes)
        todo = float(max(1, prompt_tokens - held * self.block_tokens))
        self.pending_prefill[replica] = self.pending_prefill.get(replica, 0.0) + todo
        self.sent.add(replica, time.monotonic(), todo)
        if math.isfinite(self.prefill_tps.get(pool, math.inf)) and self.prefill_tps[pool] > 0:
            self.ledger.add(replica, ticket, todo / self.prefill_tps[pool], slack_s if ticket is not None else None)
        return todo

    def _prefilled(self, replica: str, tokens: float) -> None:
        left = self.pending_prefill.get(replica, 0.0) - tokens
        if left > 0.5:
            self.pending_prefill[replica] = left
        else:
            self.pending_prefill.pop(replica, None)

    def _released(self, replica: str) -> None:
        n = self.replica_load.get(replica, 0) - 1
        if n > 0:
            self.replica_load[replica] = n
        else:
            self.replica_load.pop(replica, None)

    def router_figures(self) -> dict[str, Any]:
        """What /metrics exports of the router (RuntimeMetrics.update_router)."""
        return {"waiting": self.waiting, "routed": dict(self.routed), "prefix_blocks": dict(self.blocks),
                "snapshot_timeouts": dict(self.snapshot_timeouts), "collection_seconds": self.collection_seconds}

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams,
                       request_id: str) -> AsyncIterator[TokenEvent]:
        from ray.serve.exceptions import BackPressureError

        deadline = time.monotonic() + self.wake_deadline_s   # the longest this request waits to be admitted
        live = await self._wait_for_a_replica()
        if all(ids is not None for ids in live.values()):
            running = {rid for ids in live.values() for rid in ids}
            known = {*self.index.replicas(), *self.ledger.replicas(), *self.sent.replicas(), *self.pending_prefill}
            for rid in known - running:  # scaled down or restarted: its cache and requests went with it
                self.index.forget(rid)
                self.sent.forget(rid)
                self.ledger.forget(rid)
                self.pending_prefill.pop(rid, None)
        attempts, hashes, slack = self._attempts(live, prompt_token_ids, params)
        ticket = object()   # this call's entry in the ledger (request ids come from clients and may repeat)
        retries: list[float] = []  # each full replica's own estimate
        for pool, replica in attempts:
            # the replica's load counts from the decision, not from the admission: requests decided at the same
            # moment would otherwise all see it idle and all go to it
            served_by: list[str] = [replica] if replica else []
            if replica:
                self.replica_load[replica] = self.replica_load.get(replica, 0) + 1
            gen = self.handles[pool].options(stream=True).generate.remote(
                prompt_token_ids, asdict(params), request_id, route_to=replica)
            self.inflight[pool] += 1

            def done(p=pool, by=served_by):
                self.inflight[p] -= 1
                self.ledger.finish(ticket)
                for rid in by:
                    self._released(rid)

            try:
                # Serve holds a call to a pool without a running replica for ever (one that went to zero after
                # the ranking, or one whose replicas are not known yet): the wait is bounded by the deadline
                first = await asyncio.wait_for(gen.__anext__(), max(0.001, deadline - time.monotonic()))
            except BackPressureError:
                done()
                self.front_rejections[pool] += 1
                continue
            except asyncio.TimeoutError:
                done()
                gen.cancel()
                if time.monotonic() >= deadline:
                    raise NoReplicaReady(self.wake_deadline_s / 2, "no replica admitted the request within "
                                         f"{self.wake_deadline_s:.0f} s; retry after "
                                         f"{self.wake_deadline_s / 2:.0f} s") from None
                continue
            except BaseException:
                done()
                gen.cancel()
                raise
            if first.get("accepted"):
                actual = str(first.get("replica") or replica or pool)
                if actual != replica:   # Serve placed it elsewhere (the chosen replica was gone or refused)
                    if replica:
                        served_by.remove(replica)
                        self._released(replica)
                    served_by.append(actual)
                    self.replica_load[actual] = self.replica_load.get(actual, 0) + 1
                todo = self._admitted(pool, actual, hashes, len(prompt_token_ids), ticket, slack.get(actual))
                return _RemoteStream(pool, gen, done, lambda rid=actual, n=todo: self._prefilled(rid, n))
            done()
            if first.get("rejected") == "prompt_too_long":
                raise PromptTooLong(first["prompt_tokens"], first["max_context_tokens"], first["message"])
            retries.append(float(first.get("retry_after_s", 1.0)))
        retry_after = min(retries, default=1.0)  # the soonest any replica expects room (1 s under back-pressure)
        raise QueueFull(retry_after, f"every replica's queue is full; retry after {retry_after:.1f} s")

    async def _refresh_pool(self, pool: str) -> None:
        """Sample snapshots until every known replica answered once (routing is random, so ask a few times).
        A pool Serve says is at zero is not asked, and no answer is waited for past SNAPSHOT_S: a call to a
        pool without a running replica would wait for one for ever, and /metrics with it."""
        live = self._live().get(pool)
        if live is not None and not live:
            return
        tries = 2 * max(1, len(self._snaps[pool])) + 2
        calls = [self.handles[pool].snapshot.remote() for _ in range(tries)]
        pending = [asyncio.ensure_future(_await(c)) for c in calls]
        done, late = await asyncio.wait(pending, timeout=SNAPSHOT_S)
        self.snapshot_timeouts[pool] = self.snapshot_timeouts.get(pool, 0) + len(late)
        for c, f in zip(calls, pending):
            if f in late:
                f.cancel()
                c.cancel()
        results = [f.result() for f in done if not f.cancelled() and f.exception() is None]
        for r in results:
            if isinstance(r, dict):
                self._snaps[pool][r["replica"]] = (EngineStats(**r["stats"]), time.time())

    def _retire(self, now: float) -> None:
        """Drop replicas silent past STALE_SNAPSHOT_S from ``_snaps`` (bounded by live replicas); their counters
        move to ``_retired`` so that no counter goes down in /metrics. Beyond MAX_RETIRED ids the oldest are
        summed into one entry."""
        for pool, snaps in self._snaps.items():
            retired = self._retired.setdefault(pool, {})
            for replica in snaps:  # answered again: its own snapshot holds its counters
                retired.pop(replica, None)
            for replica in [r for r, (_, seen) in snaps.items() if now - seen > STALE_SNAPSHOT_S]:
                stats, _ = snaps.pop(replica)
                retired[replica] = EngineStats(  # counters only: a gone replica's gauges stop adding
                    tokens=stats.tokens, requests=stats.requests, expert_tokens=stats.expert_tokens,
                    prefix_cache_disk_write_failures=stats.prefix_cache_disk_write_failures,
                    prefix_cache_disk_bad_blocks=stats.prefix_cache_disk_bad_blocks)
            while len(retired) > MAX_RETIRED + ("" in retired):
                oldest = next(r for r in retired if r != "")
                retired[""] = merge_stats([retired.pop(oldest)] + ([retired.pop("")] if "" in retired else []))

    async def _collect(self) -> dict[str, EngineStats]:
        t0 = time.monotonic()
        await asyncio.gather(*(self._refresh_pool(p) for p in self.handles))
        self.collection_seconds = time.monotonic() - t0
        self._retire(time.time())
        out = {}
        for pool, snaps in self._snaps.items():
            merged = merge_stats([s for s, _ in snaps.values()] + list(self._retired.get(pool, {}).values()))
            merged.requests["rejected"] = merged.requests.get("rejected", 0) + self.front_rejections.get(pool, 0)
            out[pool] = merged
        return out

    async def stats_by_pool(self) -> dict[str, EngineStats]:
        """Per-pool sums for /metrics. One collection (2n+2 snapshot calls per pool of n replicas: a handle call
        reaches a random replica) serves every scrape that arrives while it runs and within METRICS_TTL_S after
        it started, so actor calls are bounded by the TTL, not by how often or how many scrapers ask."""
        now = time.monotonic()
        c = self._collection
        if c is None or (c.done() and (c.cancelled() or c.exception() is not None
                                       or now - self._collected_at >= METRICS_TTL_S)):
            self._collection, self._collected_at = asyncio.ensure_future(self._collect()), now
        return await asyncio.shield(self._collection)  # a scraper that leaves does not cancel the others' wait

    def stats(self) -> EngineStats:
        return merge_stats([s for snaps in self._snaps.values() for s, _ in snaps.values()]
                           + [s for retired in self._retired.values() for s in retired.values()])


@serve.deployment(name="OpenAIIngress", ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=INGRESS_MAX_ONGOING, max_queued_requests=INGRESS_MAX_ONGOING)
@serve.ingress()
class OpenAIIngress:
    """HTTP ingress: the OpenAI API of ``server.build_http_app`` over the pools' engines."""

    async def __init__(self, config: dict[str, Any], engines: dict[str, DeploymentHandle],
                       board_key: str | None = None):
        cfg = RuntimeConfig.model_validate(config)
        try:
            app = serve.get_replica_context().app_name
        except Exception:  # outside a replica
            app = None
        info = await self._describe(engines)  # None: every pool at zero (the deployment starts asleep)
        self.engine = RemoteEngine(engines, info, cfg, app)
        await self.engine.prime()
        self.metrics = RuntimeMetrics(cfg.model_name, cfg.metrics_labels)
        self.default_pool = cfg.pools[0].name
        self.admin: BoardClient | None = None
        if app is not None and board_key is not None:
            initial = cfg.placement.to_json() if cfg.placement is not None else None
            own = {p.name: p.placement.to_json() for p in cfg.pools if p.placement is not None}
            def shape(i: dict[str, Any]) -> tuple[int, int]:
                return int(i["num_moe_layers"]), int(i["num_experts"])

            known = shape(info) if info else (cfg.placement.num_layers, cfg.placement.num_experts) \
                if cfg.placement is not None else (1, 1)
            self.admin = BoardClient(board_key, lambda: get_board(app), [p.name for p in cfg.pools], initial,
                                     known, initial_by_pool=own)
            self.engine.on_info.append(lambda i, board=self.admin: setattr(board, "shape", shape(i)))
            self.admin.start()

    @staticmethod
    async def _describe(engines: dict[str, DeploymentHandle]) -> dict[str, Any] | None:
        """The model's facts from the first pool that answers within DESCRIBE_S, else None: a pool at zero
        answers nothing, and an ingress whose pools are all at zero must still start, to hold the first request
        and export the demand that wakes them (RemoteEngine.wait_ready learns the facts then)."""
        calls = [h.describe.remote() for h in engines.values()]
        pending = {asyncio.ensure_future(_await(c)) for c in calls}
        end = time.monotonic() + DESCRIBE_S
        try:
            while pending and time.monotonic() < end:
                done, pending = await asyncio.wait(pending, timeout=max(0.0, end - time.monotonic()),
                                                   return_when=asyncio.FIRST_COMPLETED)
                for d in done:
                    if d.exception() is None:
                        return d.result()
            return None
        finally:
            for c in calls:
                c.cancel()
            for f in pending:
                f.cancel()

    def __serve_build_asgi_app__(self):
        from moe_runtime.server import build_http_app

        return build_http_app(self.engine, pool=self.default_pool, metrics=self.metrics, manage_engine=False,
                              admin=self.admin)


def _whole_prompt_key(ids: list[int]) -> bytes:
    """The rendezvous key of a prompt shorter than one cache block: its own hash, so short prompts spread too."""
    return block_hashes(ids, len(ids))[0] if ids else b""


async def _await(response):
    return await response


def engine_deployment_options(cfg: RuntimeConfig, pool) -> dict[str, Any]:
    """Serve options of ``engine-<pool>``; serveConfigV2 ``deployments`` entries override them."""
    return {
        "name": f"engine-{pool.name}",
        "num_replicas": pool.num_replicas,
        "ray_actor_options": dict(pool.ray_actor_options),
        # Let every replica see more requests than it admits, so that the engine's own bounded queue (not Serve's
        # router queue, which would hold requests back without refusing them) answers QueueFull -> HTTP 429.
        "max_ongoing_requests": 2 * (cfg.max_batch_size + cfg.max_queue) + 16,
        "max_queued_requests": HANDLE_QUEUE,
        # A scale-down lets each replica Serve stops finish its streams for this long (it routes it nothing new
        # meanwhile): the longest request the config allows at the default decode speed. serveConfigV2 sets the
        # spec's own (the TPOT target's) figure.
        "graceful_shutdown_timeout_s": drain_timeout_s(cfg.max_context_tokens),
        # Serve sends a call to the replica the ingress chose (its route_to), else as it would. By import path:
        # a class object is pickled by value, and its copy would publish replica sets to a copy of the module
        # the ingress never reads.
        "request_router_config": RequestRouterConfig(request_router_class=HINT_ROUTER),
    }


def app_builder(args: dict[str, Any]):
    """Serve application builder for ``import_path: moe_runtime.serve_app:app_builder``."""
    cfg = RuntimeConfig.model_validate(args)
    key = config_key(cfg.model_dump(mode="json"))  # the placement board's generation: a new config starts afresh
    engines = {
        pool.name: EngineDeployment.options(**engine_deployment_options(cfg, pool)).bind(
            cfg.for_pool(pool.name).model_dump(mode="json"), pool.name, key)
        for pool in cfg.pools
    }
    return OpenAIIngress.bind(cfg.model_dump(mode="json"), engines, key)
