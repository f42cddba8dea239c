"""``moectl rebalance``: place experts for recorded per-expert loads and show the gain over round-robin.

Offline front door to ``moe_operator.planning.placement`` (docs/placement.md describes the file formats).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from moe_operator.errors import UserError
from moe_operator.planning.placement import (
    Device,
    Placement,
    balance,
    device_loads,
    placement_stats,
    round_robin,
    to_placement_json,
)

# COUNTxNAME[@SPEED][:SLOTS], e.g. 8xH800, 8x910B@0.6, 4xcpu@1:3
_TERM = re.compile(r"^\s*(\d+)\s*[xX]\s*([A-Za-z0-9._-]+?)\s*(?:@\s*([0-9.eE+-]+))?\s*(?::\s*(\d+))?\s*$")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "rebalance",
        help="place experts on devices for recorded per-expert loads",
        description="Replicate hot experts and pack expert copies onto devices of different speeds so that the "
        "slowest device finishes each MoE layer as early as possible; compare with round-robin.",
    )
    p.add_argument("--loads", required=True, metavar="FILE",
                   help='JSON {"layers": [[tokens per expert, ...], ...]}: one list per MoE layer')
    p.add_argument("--devices", required=True, metavar="SPEC",
                   help="COUNTxNAME[@SPEED][:SLOTS],... (e.g. 8xH800,8x910B@0.6) or a JSON file "
                   '[{"name", "speed", "slots", "node"}]; a NAME from the catalog gives its bf16 TFLOP/s as speed')
    p.add_argument("--redundant", type=int, default=0, metavar="N", help="redundant expert slots per layer (default 0)")
    p.add_argument("--groups", type=int, default=None, metavar="G",
                   help="expert groups of a group-limited router: each group stays on one node")
    p.add_argument("--node-size", type=int, default=8, metavar="K",
                   help="devices per node for a COUNTxNAME term (default 8)")
    p.add_argument("--catalog", metavar="FILE", help="catalog overrides (the cluster's catalog ConfigMap YAML)")
    p.add_argument("--output", "-o", metavar="FILE", help="also write the placement JSON (contracts section 2) here")
    p.add_argument("--json", action="store_true", help="print JSON: placement, before, after, lowerBound")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    loads = read_loads(args.loads)
    num_experts = len(loads[0])
    if args.redundant < 0:
        raise UserError(f"--redundant must be >= 0, got {args.redundant}")
    if args.node_size < 1:
        raise UserError(f"--node-size must be >= 1, got {args.node_size}")
    devices = parse_devices(args.devices, num_experts + args.redundant, args.node_size, args.catalog)
    after = balance(loads, devices, args.redundant, num_groups=args.groups)
    before = round_robin(len(loads), num_experts, devices, args.redundant)
    report = compare(before, after, loads)
    placement_json = to_placement_json(after)
    if args.output:
        try:
            Path(args.output).write_text(json.dumps(placement_json) + "\n")
        except OSError as exc:
            raise UserError(f"cannot write {args.output}: {exc.strerror}") from None
    if args.json:
        json.dump({"placement": placement_json, **report}, sys.stdout)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(summary(after, loads, report))
    return 0


def read_loads(path: str) -> list[list[float]]:
    """The loads file: ``{"layers": [[tokens routed to expert e, ...] per MoE layer]}``."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"cannot read loads file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"loads file {path} is not JSON: {exc.msg} at line {exc.lineno}") from None
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list) or not layers or not all(isinstance(row, list) for row in layers):
        raise UserError(
            f'loads file {path} must be {{"layers": [[tokens per expert, ...], ...]}} with one list per layer'
        )
    for i, row in enumerate(layers):
        for x in row:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise UserError(f"loads file {path}: layer {i} holds {x!r}; loads must be numbers")
    return layers


def parse_devices(spec: str, slots_needed: int, node_size: int, catalog_path: str | None) -> list[Device]:
    """Devices from ``COUNTxNAME[@SPEED][:SLOTS],...`` or a JSON file; default slots spread ``slots_needed`` evenly."""
    if spec.strip().endswith(".json") or Path(spec).is_file():
        return _devices_from_file(spec, slots_needed)
    terms = []
    for raw in spec.split(","):
        m = _TERM.match(raw)
        if not m:
            raise UserError(
                f"device term {raw.strip()!r} is not COUNTxNAME[@SPEED][:SLOTS] (e.g. 8xH800 or 8x910B@0.6:40)"
            )
        count, name, speed, slots = int(m[1]), m[2], m[3], m[4]
        if count < 1:
            raise UserError(f"device term {raw.strip()!r} has no devices")
        terms.append((count, name, _number(speed, raw) if speed else None, int(slots) if slots else None))
    total = sum(t[0] for t in terms)
    default_slots = math.ceil(slots_needed / total)
    speeds = _catalog_speeds([name for _, name, speed, _ in terms if speed is None], catalog_path)
    devices, node, seen = [], 0, {}
    for count, name, speed, slots in terms:
        for i in range(count):
            index = seen[name.lower()] = seen.get(name.lower(), -1) + 1
            devices.append(Device(
                name=f"{name.lower()}-{index}",
                speed=speed if speed is not None else speeds[name],
                slots=slots if slots is not None else default_slots,
                node=f"node-{node + i // node_size}",
            ))
        node += math.ceil(count / node_size)
    return devices


def _number(text: str, term: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"device term {term.strip()!r}: speed {text!r} is not a number") from None


def _catalog_speeds(names: list[str], catalog_path: str | None) -> dict[str, float]:
    """Relative speed of catalog accelerators: peak 16-bit TFLOP/s over the fastest one named."""
    if not names:
        return {}
    from moe_operator.cli._common import load_catalog  # the catalog brings pydantic and yaml; only when needed

    catalog = load_catalog(catalog_path)
    tflops = {}
    for name in names:
        key = _catalog_key(name, catalog.keys())
        if key is None:
            raise UserError(
                f"device {name!r} is not in the catalog ({', '.join(catalog.keys())}); "
                f"give its relative speed, e.g. 8x{name}@0.6"
            )
        tflops[name] = catalog.get(key).tflops.sixteen_bit
    fastest = max(tflops.values())
    return {name: value / fastest for name, value in tflops.items()}


def _catalog_key(name: str, keys: list[str]) -> str | None:
    """'H800' -> nvidia-h800, '910B' -> ascend-910b, 'A100' -> nvidia-a100-80gb (a unique prefix match)."""
    want = name.lower()
    if want in keys:
        return want
    matches = [k for k in keys if k.split("-", 1)[-1] == want]
    if len(matches) != 1:
        matches = [k for k in keys if k.split("-", 1)[-1].startswith(want + "-")]
    return matches[0] if len(matches) == 1 else None


def _devices_from_file(path: str, slots_needed: int) -> list[Device]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"cannot read devices file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"devices file {path} is not JSON: {exc.msg} at line {exc.lineno}") from None
    if isinstance(data, dict):
        data = data.get("devices")
    if not isinstance(data, list) or not data or not all(isinstance(d, dict) for d in data):
        raise UserError(f'devices file {path} must be a list of {{"name", "speed", "slots", "node"}} objects')
    default_slots = math.ceil(slots_needed / len(data))
    devices = []
    for i, entry in enumerate(data):
        unknown = set(entry) - {"name", "speed", "slots", "node"}
        if unknown:
            raise UserError(f"devices file {path}: device {i} has unknown field(s) {sorted(unknown)}")
        name = entry.get("name", f"device-{i}")
        speed, slots = entry.get("speed", 1.0), entry.get("slots", default_slots)
        if not isinstance(name, str) or not name:
            raise UserError(f"devices file {path}: device {i} needs a non-empty string name")
        if isinstance(speed, bool) or not isinstance(speed, (int, float)):
            raise UserError(f"devices file {path}: device {name!r} speed {speed!r} is not a number")
        if isinstance(slots, bool) or not isinstance(slots, int):
            raise UserError(f"devices file {path}: device {name!r} slots {slots!r} is not an integer")
        devices.append(Device(name=name, speed=float(speed), slots=slots, node=entry.get("node")))
    return devices


def compare(before: Placement, after: Placement, loads) -> dict:
    """Before/after figures: max/mean device load, step time (sum over layers of the slowest device)."""
    b, a = placement_stats(before, loads), placement_stats(after, loads)
    return {
        "before": {"maxOverMeanLoad": b.max_over_mean, "maxDeviceTime": b.step_time, "gapToLowerBound": b.gap},
        "after": {"maxOverMeanLoad": a.max_over_mean, "maxDeviceTime": a.step_time, "gapToLowerBound": a.gap},
        "lowerBound": a.lower_bound,
    }


def summary(placement: Placement, loads, report: dict) -> str:
    """Per-device table (experts held, share of the load, busy time vs the slowest) and the before/after figures."""
    per_device = device_loads(placement, loads)
    devices = placement.devices
    times = [sum(row[d] / devices[d].speed for row in per_device) for d in range(len(devices))]
    total_load = sum(map(sum, per_device)) or 1.0
    slowest = max(times) or 1.0
    held = [
        sum(len(layer.experts_on(d)) for layer in placement.layers) / placement.num_layers for d in range(len(devices))
    ]
    copies = sum(sum(r - 1 for r in layer.replicas) for layer in placement.layers) / placement.num_layers
    lines = [
        f"placement: {placement.num_layers} layers x {placement.num_experts} experts, {placement.num_slots} slots "
        f"on {len(devices)} devices ({placement.num_slots - placement.num_experts} redundant; "
        f"{copies:.1f} extra copies per layer)",
        "",
        f"{'device':<16} {'node':<10} {'speed':>6} {'slots':>5} {'experts':>8} {'load':>7} {'busy':>6}",
    ]
    for d, dev in enumerate(devices):
        lines.append(
            f"{dev.name:<16} {str(dev.node if dev.node is not None else '-'):<10} {dev.speed:>6.2f} {dev.slots:>5} "
            f"{held[d]:>8.1f} {100 * sum(row[d] for row in per_device) / total_load:>6.1f}% "
            f"{100 * times[d] / slowest:>5.0f}%"
        )
    before, after = report["before"], report["after"]
    lines += [
        "",
        "(experts: mean per layer; load: share of all tokens; busy: time vs the slowest device, summed over layers)",
        "",
        f"{'':<34} {'round-robin':>12} {'balanced':>12}",
        f"{'max/mean device load':<34} {before['maxOverMeanLoad']:>12.3f} {after['maxOverMeanLoad']:>12.3f}",
        f"{'max device time (sum over layers)':<34} {before['maxDeviceTime']:>12.4g} {after['maxDeviceTime']:>12.4g}",
        f"{'gap to lower bound':<34} {100 * before['gapToLowerBound']:>11.1f}% "
        f"{100 * after['gapToLowerBound']:>11.1f}%",
        f"lower bound (max device time): {report['lowerBound']:.4g}; speedup of the MoE layers: "
        f"{before['maxDeviceTime'] / after['maxDeviceTime']:.2f}x"
        if after["maxDeviceTime"] > 0
        else "",
    ]
    return "\n".join(lines) + "\n"
