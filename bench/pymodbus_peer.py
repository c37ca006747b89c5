#!/usr/bin/env python3
"""The pymodbus side of protocols/examples/modbus_bench.rs.

Polls the same simulated devices with the same requests as rackwarden's client
(generic-pdu: holding 0..10, holding 100..148, coils 0..48, one TCP connection per
device) through pymodbus's async client, one collector coroutine per device polling
once per second for --seconds (all together, or spread with --spread), decodes the values
the same way, and prints one JSON line: reads, errors, wall_s, cpu_s (user + system), sys_s, rss_kb,
p99_ms (one device read, successful reads).
"""

import argparse
import asyncio
import json
import os
import resource
import sys
import time

try:
    import pymodbus
    from pymodbus.client import AsyncModbusTcpClient
except ImportError as e:
    print(json.dumps({"error": f"pymodbus not importable: {e}"}), flush=True)
    sys.exit(3)

DT = AsyncModbusTcpClient.DATATYPE


async def read_device(client, unit):
    a = await client.read_holding_registers(0, count=10, device_id=unit)
    b = await client.read_holding_registers(100, count=48, device_id=unit)
    c = await client.read_coils(0, count=48, device_id=unit)
    if a.isError() or b.isError() or c.isError():
        raise RuntimeError("exception response")
    regs = a.registers
    values = {
        "inlet_power": client.convert_from_registers(regs[0:2], DT.UINT32) * 0.001,
        "inlet_energy": client.convert_from_registers(regs[2:4], DT.UINT32) * 0.1,
    }
    for i in range(3):
        values[f"phase_current[{i+1}]"] = regs[4 + i] * 0.01
        values[f"phase_voltage[{i+1}]"] = regs[7 + i] * 0.1
    for i, r in enumerate(b.registers):
        values[f"outlet_power[{i+1}]"] = r * 0.001
    for i, bit in enumerate(c.bits[:48]):
        values[f"outlet_state[{i+1}]"] = 1.0 if bit else 0.0
    return values


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ports", required=True, help="comma-separated simulator ports")
    ap.add_argument("--units-per-port", type=int, required=True)
    ap.add_argument("--devices", type=int, required=True)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--spread", action="store_true", help="start collectors spread over 1 s")
    args = ap.parse_args()
    ports = [int(p) for p in args.ports.split(",")]
    targets = []
    for d in range(args.devices):
        port = ports[d // args.units_per_port]
        unit = 1 + d % args.units_per_port
        targets.append((port, unit))
    clients = [
        AsyncModbusTcpClient("127.0.0.1", port=p, timeout=args.timeout, retries=0)
        for p, _ in targets
    ]
    await asyncio.gather(*(c.connect() for c in clients))
    counts = {"reads": 0, "errors": 0}
    lat = []
    cpu0 = time.process_time()
    sys0 = os.times().system
    t0 = time.monotonic()

    async def collector(i, client, unit):
        # As in the Rust run: all together, or spread over the first second.
        offset = i / len(clients) if args.spread else 0.0
        for tick in range(args.seconds):
            await asyncio.sleep(max(0.0, t0 + offset + tick - time.monotonic()))
            t = time.monotonic()
            try:
                values = await read_device(client, unit)
                lat.append(time.monotonic() - t)
                ok = len(values) == 104 and values["inlet_power"] == 12.5
            except Exception:  # a timeout or a broken connection counts as an error
                ok = False
            counts["reads" if ok else "errors"] += 1

    await asyncio.gather(
        *(collector(i, c, u) for i, (c, (_, u)) in enumerate(zip(clients, targets)))
    )
    reads, errors = counts["reads"], counts["errors"]
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    sys_s = os.times().system - sys0
    for c in clients:
        c.close()
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    lat.sort()
    p99_ms = lat[(len(lat) - 1) * 99 // 100] * 1e3 if lat else float("nan")
    print(
        json.dumps(
            {
                "pymodbus": pymodbus.__version__,
                "reads": reads,
                "errors": errors,
                "wall_s": wall,
                "cpu_s": cpu,
                "sys_s": sys_s,
                "rss_kb": rss_kb,
                "p99_ms": p99_ms,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
