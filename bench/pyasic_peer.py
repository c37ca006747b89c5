"""Poll simulated miners once with pyasic, as a reference for miner_bench.

Usage: python pyasic_peer.py IP:FIRMWARE ...   (firmware names as in rackwarden)
Prints: ok=N failed=N cpu_per_miner_us=X wall_ms=Y  (CPU from getrusage, this process).
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


async def main(targets):
    sem = asyncio.Semaphore(256)
    ok = failed = 0

    async def one(ip, fw):
        nonlocal ok, failed
        async with sem:
            try:
                miner = CLASSES[fw](ip)
                data = await asyncio.wait_for(miner.get_data(include=INCLUDE), 30)
                if data.hashrate is not None:
                    ok += 1
                else:
                    failed += 1
            except Exception:  # noqa: BLE001 - count, keep going
                failed += 1

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    await asyncio.gather(*(one(*t.split(":")) for t in targets))
    wall = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    n = max(len(targets), 1)
    print(f"ok={ok} failed={failed} cpu_per_miner_us={cpu * 1e6 / n:.0f} wall_ms={wall * 1e3:.0f}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
