"""Poll simulated miners once with pyasic, as a reference for miner_bench.

Usage: python pyasic_peer.py IP:FIRMWARE ...   (firmware names as in rackwarden)
Prints, per firmware on stderr, ok/failed and CPU per miner; on stdout the CPU per miner
over the firmwares pyasic read completely (CPU from getrusage, this process).
pyasic fixes port 4028 (and 80 for web), which is why the bench gives every simulated
miner its own 127.x.y.z address. Field coverage matches what the controller needs:
hashrate, wattage, wattage limit, temperatures, fans, uptime, mining state.
"""

import asyncio
import resource
import sys
import time

from pyasic.miners.antminer.bmminer.X19.S19 import BMMinerS19Pro
from pyasic.miners.antminer.bosminer.X19.S19 import BOSMinerS19Pro
from pyasic.miners.antminer.luxos.X19.S19 import LUXMinerS19kPro
from pyasic.miners.antminer.vnish.X19.S19 import VNishS19Pro
from pyasic.miners.avalonminer.cgminer.A12X.A1246 import CGMinerAvalon1246
from pyasic.miners.whatsminer.btminer.M5X.M50S import BTMinerM50SVH10

CLASSES = {
    "braiins": BOSMinerS19Pro,
    "luxos": LUXMinerS19kPro,
    "whatsminer": BTMinerM50SVH10,
    "vnish": VNishS19Pro,
    "antminer_stock": BMMinerS19Pro,
    "avalon": CGMinerAvalon1246,
}

INCLUDE = ["hashrate", "wattage", "wattage_limit", "hashboards", "fans", "uptime", "is_mining"]


async def poll_group(targets):
    """Poll one firmware's miners concurrently; (ok, failed, cpu seconds, first error)."""
    sem = asyncio.Semaphore(256)
    ok = failed = 0
    first_error = ""

    async def one(ip, fw):
        nonlocal ok, failed, first_error
        async with sem:
            try:
                miner = CLASSES[fw](ip)
                data = await asyncio.wait_for(miner.get_data(include=INCLUDE), 30)
                if data.hashrate is not None and data.wattage is not None:
                    ok += 1
                else:
                    failed += 1
                    first_error = first_error or "incomplete data"
            except Exception as e:  # noqa: BLE001 - count, keep going
                failed += 1
                first_error = first_error or repr(e)[:120]

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(one(*t.split(":")) for t in targets))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return ok, failed, cpu, first_error


async def main(targets):
    groups = {}
    for t in targets:
        groups.setdefault(t.split(":")[1], []).append(t)
    t0 = time.monotonic()
    ok_total = ok_cpu = 0.0
    for fw, group in groups.items():
        ok, failed, cpu, err = await poll_group(group)
        per = cpu * 1e6 / len(group)
        print(f"  pyasic {fw}: ok={ok} failed={failed} cpu_per_miner_us={per:.0f} {err}", file=sys.stderr)
        # Only firmwares pyasic fully read count toward the comparison.
        if failed == 0:
            ok_total += ok
            ok_cpu += cpu
    wall = time.monotonic() - t0
    per = ok_cpu * 1e6 / ok_total if ok_total else float("nan")
    print(f"complete_miners={ok_total:.0f} cpu_per_miner_us={per:.0f} pyasic_wall_ms={wall * 1e3:.0f}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
