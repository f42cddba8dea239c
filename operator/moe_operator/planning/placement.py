"""Expert placement: which experts each device holds, with redundant copies of hot experts.

DeepSeek's EPLB for mixed fleets. Real traffic routes tokens unevenly; the device holding the hottest
experts sets the time of every MoE layer. We (1) give the redundant slots to the experts with the
highest load per copy, (2) pack the copies onto devices longest-first by *time* (load / speed), within
each device's slot budget and never two copies of one expert on one device, then (3) swap or move
copies off the slowest device while that helps. With expert groups and nodes, whole groups stay on one
node (group-limited routing, as DeepSeek-V3 routes) and copies stay on their group's node.

Units: a load is any non-negative token count (tokens routed to an expert over a window); a speed is
relative throughput (tokens per second of one device, any common unit); a device's time is
load / speed. Tokens routed to an expert with ``r`` copies are split evenly, ``load / r`` per copy.

Pure Python (no numpy: the operator image does not ship it); deterministic: ties go to the lower
expert id, then the lower device index. Everything here is a function of its arguments, no I/O.
"""
from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

from moe_operator.errors import UserError

# A move must shorten the slowest device by more than this fraction of its time (stops float ping-pong).
_IMPROVE_TOL = 1e-9
# Partner devices the local search tries per step once it has found an improvement (most promising first).
_CANDIDATES = 4
# Mixed speeds: repacks spent per layer and domain moving copies between experts, and donors tried per receiver.
_SHIFT_TRIES = 12
_SHIFT_DONORS = 3
# ... only when the slowest device is this fraction above the domain's ideal time (total load / total speed).
_SHIFT_SLACK = 0.01


@dataclass(frozen=True)
class Device:
    """One accelerator that holds expert copies.

    ``speed``: relative throughput (> 0; 1.0 = the reference device). ``slots``: experts of one MoE layer
    that fit in its memory. ``node``: the host it sits on (devices sharing a node share a fast link).
    ``device_type`` and ``ray_resources`` only flow into the placement JSON's shard entries.
    """

    name: str
    speed: float = 1.0
    slots: int = 1
    node: Hashable | None = None
    device_type: str = "cpu"
    ray_resources: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LayerPlacement:
    """One MoE layer: ``slot_expert[s]`` is the expert in physical slot ``s``, ``slot_device[s]`` the
    device index holding it (slots are ordered by device, then expert), ``replicas[e]`` the number of
    copies of expert ``e``."""

    slot_expert: tuple[int, ...]
    slot_device: tuple[int, ...]
    replicas: tuple[int, ...]

    def experts_on(self, device: int) -> list[int]:
        """Expert ids held by ``device`` (ascending)."""
        return [e for e, d in zip(self.slot_expert, self.slot_device) if d == device]

    def experts_by_device(self, num_devices: int) -> list[list[int]]:
        """``experts_on(d)`` for every device ``d < num_devices``, in one pass over the slots."""
        out: list[list[int]] = [[] for _ in range(num_devices)]
        for e, d in zip(self.slot_expert, self.slot_device):
            out[d].append(e)
        return out


@dataclass(frozen=True)
class Placement:
    """Per-layer placement over ``devices``; ``layers[l]`` is MoE layer ``l``."""

    devices: tuple[Device, ...]
    num_experts: int
    layers: tuple[LayerPlacement, ...]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_slots(self) -> int:
        """Physical expert slots per layer (experts + redundant copies)."""
        return len(self.layers[0].slot_expert) if self.layers else 0


@dataclass(frozen=True)
class PlacementStats:
    """How balanced a placement is for given loads.

    ``max_over_mean``: per layer max device load / mean device load, averaged over layers (1.0 = even).
    ``step_time``: sum over layers of the slowest device's time (load / speed): the MoE part of one step.
    ``lower_bound``: sum over layers of max(total load / total speed, hottest copy / fastest speed),
    which no placement with this many slots can beat. ``gap`` = step_time / lower_bound - 1.
    """

    max_over_mean: float
    step_time: float
    lower_bound: float

    @property
    def gap(self) -> float:
        return self.step_time / self.lower_bound - 1.0 if self.lower_bound > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def balance(
    loads: Sequence[Sequence[float]],
    devices: Sequence[Device],
    redundant_slots: int,
    *,
    node_of_device: Sequence[Hashable] | None = None,
    num_groups: int | None = None,
) -> Placement:
    """Place ``E + redundant_slots`` expert copies per layer on ``devices`` minimising the slowest device.

    ``loads``: [L][E] tokens routed to each expert of each MoE layer. ``node_of_device``: node of each
    device (overrides ``Device.node``). ``num_groups``: the model's expert groups (experts
    ``[g*E/G, (g+1)*E/G)``); with more than one node, each group and all its copies stay on one node.
    Raises UserError when the input is malformed or the slots cannot hold the copies.
    """
    matrix = _check_loads(loads)
    devs = _check_devices(devices)
    num_experts = len(matrix[0])
    nodes = _nodes(devs, node_of_device)
    total = _check_slots(num_experts, devs, redundant_slots)
    grouped = num_groups is not None and len(set(nodes)) > 1
    if num_groups is not None:
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise UserError(f"num_groups must be a positive integer, got {num_groups!r}")
        if num_experts % num_groups:
            raise UserError(f"{num_experts} experts cannot be split into {num_groups} equal groups")
    speeds = [d.speed for d in devs]
    caps = [d.slots for d in devs]
    layers = []
    for weights in matrix:
        if grouped:
            domains = _group_domains(weights, num_groups, nodes, speeds, caps)
        else:
            domains = [(list(range(num_experts)), list(range(len(devs))))]
        layers.append(_place_layer(weights, speeds, caps, domains, total))
    return Placement(devices=devs, num_experts=num_experts, layers=tuple(layers))


def static_placement(num_layers: int, num_experts: int, devices: Sequence[Device], redundant: int) -> Placement:
    """The placement before any traffic is seen: ``balance`` with every expert equally loaded."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise UserError(f"num_layers must be a positive integer, got {num_layers!r}")
    if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
        raise UserError(f"num_experts must be a positive integer, got {num_experts!r}")
    one = balance([[1.0] * num_experts], devices, redundant)
    return Placement(devices=one.devices, num_experts=num_experts, layers=one.layers * num_layers)


def round_robin(num_layers: int, num_experts: int, devices: Sequence[Device], redundant: int) -> Placement:
    """Load-blind baseline: slot ``i`` holds expert ``i mod E`` on the next device (cyclic) with room.

    The ``redundant`` extra slots copy experts ``0 .. redundant-1``, whatever their load.
    """
    devs = _check_devices(devices)
    total = _check_slots(num_experts, devs, redundant)
    free = [d.slots for d in devs]
    holds: list[set[int]] = [set() for _ in devs]
    replicas = [0] * num_experts
    pointer = 0
    for i in range(total):
        e = i % num_experts
        for step in range(len(devs)):
            d = (pointer + step) % len(devs)
            if free[d] > 0 and e not in holds[d]:
                break
        else:
            raise UserError(f"round-robin cannot place copy {i} of expert {e}: no device has a free slot without it")
        holds[d].add(e)
        free[d] -= 1
        replicas[e] += 1
        pointer = (d + 1) % len(devs)
    layer = _layer_from_holds(holds, replicas)
    return Placement(devices=devs, num_experts=num_experts, layers=(layer,) * num_layers)


def device_loads(placement: Placement, loads: Sequence[Sequence[float]]) -> list[list[float]]:
    """[L][D] tokens each device processes per layer, each expert's load split evenly over its copies."""
    matrix = _check_loads(loads)
    if len(matrix) != placement.num_layers or len(matrix[0]) != placement.num_experts:
        raise UserError(
            f"loads are {len(matrix)} layers x {len(matrix[0])} experts but the placement is "
            f"{placement.num_layers} x {placement.num_experts}"
        )
    out = []
    for weights, layer in zip(matrix, placement.layers):
        per_device = [0.0] * len(placement.devices)
        for e, d in zip(layer.slot_expert, layer.slot_device):
            per_device[d] += weights[e] / layer.replicas[e]
        out.append(per_device)
    return out


def placement_stats(placement: Placement, loads: Sequence[Sequence[float]]) -> PlacementStats:
    """Balance of ``placement`` under ``loads`` (see PlacementStats), with the devices' own speeds."""
    per_device = device_loads(placement, loads)
    speeds = [d.speed for d in placement.devices]
    total_speed = sum(speeds)
    ratios, step, bound = [], 0.0, 0.0
    redundant = placement.num_slots - placement.num_experts
    caps = [d.slots for d in placement.devices]
    for weights, row in zip(_check_loads(loads), per_device):
        mean = sum(row) / len(row)
        ratios.append(max(row) / mean if mean > 0 else 1.0)
        step += max(load / s for load, s in zip(row, speeds))
        replicas = _replicate(weights, [(list(range(len(weights))), list(range(len(caps))))], caps,
                              len(weights) + redundant)
        hottest = max(w / r for w, r in zip(weights, replicas))
        bound += max(sum(weights) / total_speed, hottest / max(speeds))
    return PlacementStats(max_over_mean=sum(ratios) / len(ratios), step_time=step, lower_bound=bound)


def to_placement_json(placement: Placement) -> dict:
    """The placement JSON of docs/contracts.md section 2 (one shard per device).

    ``layers`` collapses to a single entry when every layer is placed the same way.
    """
    # static placements repeat one LayerPlacement object for every layer: compute each distinct one once
    # (at 1024 layers x 65536 experts x 64 devices a per-layer, per-device scan took minutes)
    done: dict[int, list[list[int]]] = {}
    per_layer = [done.get(id(layer)) or done.setdefault(id(layer), layer.experts_by_device(len(placement.devices)))
                 for layer in placement.layers]
    if per_layer and all(entry is per_layer[0] or entry == per_layer[0] for entry in per_layer):
        per_layer = per_layer[:1]
    return {
        "numLayers": placement.num_layers,
        "numExperts": placement.num_experts,
        "shards": [
            {"name": d.name, "device": d.device_type, "rayResources": dict(d.ray_resources)}
            for d in placement.devices
        ],
        "layers": per_layer,
    }


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _check_loads(loads) -> list[list[float]]:
    try:
        matrix = [[float(x) for x in row] for row in loads]
    except (TypeError, ValueError) as exc:
        raise UserError(f"loads must be a list of layers, each a list of numbers per expert ({exc})") from None
    if not matrix or not matrix[0]:
        raise UserError("loads must hold at least one layer with at least one expert")
    width = len(matrix[0])
    for i, row in enumerate(matrix):
        if len(row) != width:
            raise UserError(f"every layer must list {width} experts, layer {i} lists {len(row)}")
        for e, x in enumerate(row):
            if not math.isfinite(x) or x < 0:
                raise UserError(f"load of expert {e} in layer {i} is {x}: loads must be finite and >= 0")
    return matrix


def _check_devices(devices) -> tuple[Device, ...]:
    devs = tuple(devices)
    if not devs:
        raise UserError("at least one device is needed")
    seen = set()
    for i, d in enumerate(devs):
        if not isinstance(d, Device):
            raise UserError(f"device {i} is {type(d).__name__}, expected a Device")
        if d.name in seen:
            raise UserError(f"device name {d.name!r} is used twice; names become shard names and must be unique")
        seen.add(d.name)
        if isinstance(d.speed, bool) or not isinstance(d.speed, (int, float)) or not math.isfinite(d.speed) \
                or d.speed <= 0:
            raise UserError(f"device {d.name!r} has speed {d.speed!r}: speeds must be finite numbers > 0")
        if isinstance(d.slots, bool) or not isinstance(d.slots, int) or d.slots < 0:
            raise UserError(f"device {d.name!r} has {d.slots!r} slots: slots must be an integer >= 0")
    return devs


def _check_slots(num_experts: int, devs: Sequence[Device], redundant: int) -> int:
    if isinstance(redundant, bool) or not isinstance(redundant, int) or redundant < 0:
        raise UserError(f"redundant slots must be an integer >= 0, got {redundant!r}")
    total = num_experts + redundant
    room = sum(min(d.slots, num_experts) for d in devs)
    if total > room:
        raise UserError(
            f"{num_experts} experts + {redundant} redundant copies need {total} slots, but the devices hold "
            f"{sum(d.slots for d in devs)} slots ({room} usable: one copy of an expert per device); "
            f"add devices, give them more slots, or lower the redundant slots"
        )
    return total


def _nodes(devs: Sequence[Device], node_of_device) -> list:
    if node_of_device is None:
        return [d.node for d in devs]
    nodes = list(node_of_device)
    if len(nodes) != len(devs):
        raise UserError(f"node_of_device names {len(nodes)} nodes for {len(devs)} devices")
    return nodes


# ---------------------------------------------------------------------------------------------
# One layer
# ---------------------------------------------------------------------------------------------


def _place_layer(weights, speeds, caps, domains, total) -> LayerPlacement:
    """Replicate, pack and improve one layer; ``domains`` = [(expert ids, device ids)] placed apart."""
    replicas = _replicate(weights, domains, caps, total)
    holds: list[set[int]] = [set() for _ in caps]
    for experts, device_ids in domains:
        items, _ = _pack_domain(weights, replicas, experts, device_ids, speeds, caps)
        if len({speeds[d] for d in device_ids}) > 1:
            items = _shift_copies(weights, replicas, experts, device_ids, speeds, caps, items)
        for d in device_ids:
            holds[d] = set(items[d])
    return _layer_from_holds(holds, replicas)


def _pack_domain(weights, replicas, experts, device_ids, speeds, caps):
    """Pack and improve one domain; returns (items per device, slowest device time)."""
    per_copy = {e: weights[e] / replicas[e] for e in experts}
    items = _pack(experts, replicas, per_copy, device_ids, speeds, caps)
    _improve(items, per_copy, device_ids, speeds, caps)
    return items, max(sum(per_copy[e] for e in items[d]) / speeds[d] for d in device_ids)


def _shift_copies(weights, replicas, experts, device_ids, speeds, caps, items):
    """Mixed speeds: water-filling can leave copies too big for the slow devices that must hold them.

    Move one copy from a donor expert (the one whose copies grow least) to an expert on the slowest
    device, repack, and keep the change when the slowest device gets faster. At most _SHIFT_TRIES
    repacks; updates ``replicas`` in place and returns the best items.
    """
    room = _room(caps, device_ids, len(experts))
    per_copy = {e: weights[e] / replicas[e] for e in experts}
    best_time = max(sum(per_copy[e] for e in items[d]) / speeds[d] for d in device_ids)
    bound = sum(weights[e] for e in experts) / sum(speeds[d] for d in device_ids)
    tries = 0 if best_time > bound * (1.0 + _SHIFT_SLACK) else _SHIFT_TRIES  # near the ideal: nothing to gain
    while tries < _SHIFT_TRIES:
        per_copy = {e: weights[e] / replicas[e] for e in experts}
        worst = max(device_ids, key=lambda d: (sum(per_copy[e] for e in items[d]) / speeds[d], -d))
        receivers = sorted(items[worst], key=lambda e: (-per_copy[e], e))
        donors = sorted((e for e in experts if replicas[e] > 1), key=lambda e: (weights[e] / (replicas[e] - 1), e))
        improved = False
        for receiver, donor in itertools.islice(
                ((r, d) for r in receivers for d in donors[:_SHIFT_DONORS] if r != d), _SHIFT_DONORS * 2):
            if weights[donor] / (replicas[donor] - 1) >= best_time * max(speeds[d] for d in device_ids):
                continue  # the donor's grown copy alone would be slower than what we have
            replicas[receiver] += 1
            replicas[donor] -= 1
            tries += 1
            if _fits([replicas[e] for e in experts if replicas[e] > 1], len(experts), room):
                trial, time = _pack_domain(weights, replicas, experts, device_ids, speeds, caps)
                if time < best_time * (1.0 - _IMPROVE_TOL):
                    items, best_time, improved = trial, time, True
                    break
            replicas[receiver] -= 1
            replicas[donor] += 1
            if tries >= _SHIFT_TRIES:
                break
        if not improved:
            break
    return items


def _layer_from_holds(holds: Sequence[set[int]], replicas: Sequence[int]) -> LayerPlacement:
    slot_expert, slot_device = [], []
    for d, experts in enumerate(holds):
        for e in sorted(experts):
            slot_expert.append(e)
            slot_device.append(d)
    return LayerPlacement(tuple(slot_expert), tuple(slot_device), tuple(replicas))


def _room(caps: Sequence[int], device_ids: Sequence[int], n: int) -> list[int]:
    """room[k] = copies of k distinct experts the devices can hold (each device at most one copy each)."""
    at_least = [0] * (n + 2)  # at_least[k] = devices with >= k slots, for k <= n
    for d in device_ids:
        at_least[min(caps[d], n)] += 1
    for k in range(n - 1, -1, -1):
        at_least[k] += at_least[k + 1]
    room = [0] * (n + 1)
    for k in range(1, n + 1):
        room[k] = room[k - 1] + at_least[k]
    return room


def _fits(multi: Sequence[int], n: int, room: list[int]) -> bool:
    """Gale-Ryser: ``n`` experts, those with several copies holding ``multi`` copies and the rest one,
    fit on distinct devices iff for every k the k largest counts sum to at most room[k]. Past the
    multi-copy experts the slack only falls where no device has k slots, so checking k = m+1 and n
    covers the tail."""
    acc = 0
    big = sorted(multi, reverse=True)
    for k, c in enumerate(big, start=1):
        acc += c
        if acc > room[k]:
            return False
    m = len(big)
    return m >= n or (acc + 1 <= room[m + 1] and acc + (n - m) <= room[n])


def _replicate(weights, domains, caps, total) -> list[int]:
    """Copies per expert: each redundant slot goes to the expert with the highest load per copy.

    Water-filling minimises the hottest copy; copies stay placeable (``_fits``) in their domain.
    Ties: fewer copies first, then the lower expert id.
    """
    replicas = [1] * len(weights)
    rooms, multi, domain_of = [], [], {}
    for i, (experts, device_ids) in enumerate(domains):
        rooms.append(_room(caps, device_ids, len(experts)))
        multi.append({})
        for e in experts:
            domain_of[e] = i
        if not _fits([], len(experts), rooms[i]):
            raise UserError(f"{len(experts)} experts do not fit on the {len(device_ids)} devices they are assigned")
    heap = [(-w, 1, e) for e, w in enumerate(weights)]
    heapq.heapify(heap)
    extra = total - len(weights)
    while extra > 0:
        if not heap:
            raise UserError(f"{extra} redundant copies cannot be placed: every device already holds those experts")
        _, count, e = heapq.heappop(heap)
        i = domain_of[e]
        counts = multi[i]
        counts[e] = replicas[e] + 1
        if not _fits(list(counts.values()), len(domains[i][0]), rooms[i]):
            # another copy of e does not fit now, and never will once other experts gain copies
            if replicas[e] > 1:
                counts[e] = replicas[e]
            else:
                del counts[e]
            continue
        replicas[e] += 1
        extra -= 1
        heapq.heappush(heap, (-weights[e] / replicas[e], replicas[e], e))
    return replicas


def _pack(experts, replicas, per_copy, device_ids, speeds, caps) -> dict[int, list[int]]:
    """Longest copy first onto the device that would finish it earliest ((load + copy) / speed).

    Devices are grouped by speed, one heap of (load, index) each (entries go stale when a device's load
    changes or it fills up, and are dropped when seen), so a copy costs O(classes * log D). When no
    device with a free slot lacks the expert, an augmenting path moves other copies to make room.
    """
    copies = sorted(((per_copy[e], e) for e in experts for _ in range(replicas[e])), key=lambda c: (-c[0], c[1]))
    items: dict[int, list[int]] = {d: [] for d in device_ids}
    holds: dict[int, set[int]] = {d: set() for d in device_ids}
    load = {d: 0.0 for d in device_ids}
    free = {d: caps[d] for d in device_ids}

    def heaps() -> dict[float, list[tuple[float, int]]]:
        classes: dict[float, list[tuple[float, int]]] = {}
        for d in device_ids:
            if free[d] > 0:
                classes.setdefault(speeds[d], []).append((load[d], d))
        for heap in classes.values():
            heapq.heapify(heap)
        return classes

    classes = heaps()
    for w, e in copies:
        best = None
        for speed, heap in classes.items():
            aside = []
            while heap:
                top_load, d = heap[0]
                if free[d] <= 0 or top_load != load[d]:
                    heapq.heappop(heap)  # stale
                elif e in holds[d]:
                    aside.append(heapq.heappop(heap))
                else:
                    key = ((top_load + w) / speed, d)
                    if best is None or key < best:
                        best = key
                    break
            for entry in aside:
                heapq.heappush(heap, entry)
        d = _augment(e, items, holds, free, device_ids) if best is None else best[1]
        items[d].append(e)
        holds[d].add(e)
        free[d] -= 1
        if best is None:  # the augmenting path changed loads along it
            for i in device_ids:
                load[i] = sum(per_copy[x] for x in items[i])
            classes = heaps()
        else:
            load[d] += w
            if free[d] > 0:
                heapq.heappush(classes[speeds[d]], (load[d], d))
    return items


def _augment(e, items, holds, free, device_ids) -> int:
    """Make room for a copy of ``e``: find a chain d0 -> d1 -> ... where d0 lacks ``e`` and each
    device passes one of its experts to the next, ending at a device with a free slot (breadth-first,
    so the chain is shortest). Applies the moves and returns d0, which then takes ``e``."""
    start = [d for d in device_ids if e not in holds[d]]
    parent: dict[int, tuple[int, int] | None] = {d: None for d in start}
    queue = list(start)
    for d in queue:
        for x in sorted(items[d]):
            for nxt in device_ids:
                if nxt in parent or x in holds[nxt]:
                    continue
                parent[nxt] = (d, x)
                if free[nxt] > 0:
                    # walk back: each predecessor hands expert x to its successor
                    node = nxt
                    while parent[node] is not None:
                        prev, moved = parent[node]
                        items[prev].remove(moved)
                        holds[prev].discard(moved)
                        items[node].append(moved)
                        holds[node].add(moved)
                        free[node] -= 1
                        free[prev] += 1
                        node = prev
                    return node
                queue.append(nxt)
    raise UserError(f"no device can take another copy of expert {e}")


def _improve(items, per_copy, device_ids, speeds, caps) -> None:
    """Local search on the slowest device: the best single move (to a device with a free slot) or swap
    (with a lighter copy elsewhere) that lowers the slower of the two devices; repeat until none helps."""
    load = {d: sum(per_copy[e] for e in items[d]) for d in device_ids}
    holds = {d: set(items[d]) for d in device_ids}
    usable = [d for d in device_ids if caps[d] > 0]
    if not usable:
        return
    limit = 4 * sum(len(v) for v in items.values()) + 16
    for _ in range(limit):
        worst = max(usable, key=lambda d: (load[d] / speeds[d], -d))
        lw, sw, held = load[worst], speeds[worst], holds[worst]
        best_value, best = lw / sw * (1.0 - _IMPROVE_TOL), None
        # no exchange between two devices can beat their pooled time: visit the most promising first
        others = sorted(((load[d] + lw) / (speeds[d] + sw), d) for d in usable if d != worst)
        for rank, (bound, d) in enumerate(others):
            if bound >= best_value or (best is not None and rank >= _CANDIDATES):
                break
            ld, sd, hd, mine = load[d], speeds[d], holds[d], items[d]
            room = len(mine) < caps[d]
            for a in items[worst]:
                if a in hd:
                    continue
                wa = per_copy[a]
                if room:
                    x, y = (lw - wa) / sw, (ld + wa) / sd
                    value = x if x > y else y
                    if value < best_value:
                        best_value, best = value, (d, a, None)
                for b in mine:
                    delta = wa - per_copy[b]
                    if delta <= 0 or b in held:
                        continue
                    x, y = (lw - delta) / sw, (ld + delta) / sd
                    value = x if x > y else y
                    if value < best_value:
                        best_value, best = value, (d, a, b)
        if best is None:
            return
        d, a, b = best
        _transfer(items, holds, load, per_copy, a, worst, d)
        if b is not None:
            _transfer(items, holds, load, per_copy, b, d, worst)


def _transfer(items, holds, load, per_copy, expert, src, dst) -> None:
    items[src].remove(expert)
    holds[src].discard(expert)
    items[dst].append(expert)
    holds[dst].add(expert)
    load[src] -= per_copy[expert]
    load[dst] += per_copy[expert]


def _group_domains(weights, num_groups, nodes, speeds, caps):
    """Whole expert groups onto nodes, heaviest group first onto the node that finishes it earliest
    (group load / node speed), within the node's room; returns [(expert ids, device ids)] per node."""
    size = len(weights) // num_groups
    order = list(dict.fromkeys(nodes))
    members = {n: [d for d, m in enumerate(nodes) if m == n] for n in order}
    node_speed = {n: sum(speeds[d] for d in members[n]) for n in order}
    room = {n: _room(caps, members[n], len(weights)) for n in order}
    group_load = [sum(weights[g * size:(g + 1) * size]) for g in range(num_groups)]
    assigned = {n: [] for n in order}
    node_load = {n: 0.0 for n in order}
    for g in sorted(range(num_groups), key=lambda g: (-group_load[g], g)):
        best = None
        for i, n in enumerate(order):
            held = (len(assigned[n]) + 1) * size
            if held > room[n][held]:
                continue
            key = ((node_load[n] + group_load[g]) / node_speed[n], i)
            if best is None or key < best[0]:
                best = (key, n)
        if best is None:
            raise UserError(f"expert group {g} ({size} experts) fits on no node: give the nodes more slots")
        assigned[best[1]].append(g)
        node_load[best[1]] += group_load[g]
    return [
        ([e for g in sorted(assigned[n]) for e in range(g * size, (g + 1) * size)], members[n])
        for n in order
        if assigned[n]
    ] + [([], members[n]) for n in order if not assigned[n]]
