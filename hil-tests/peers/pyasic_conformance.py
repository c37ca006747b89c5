"""pyasic's side of hil-tests/tests/conformance.rs (issue 21).

A line protocol on stdin/stdout, so that one Python process (pyasic's import is slow)
serves the whole suite and the Rust test can check the simulated miner between steps:

    identify IP      -> pyasic.get_miner(IP): class, make, model, firmware, version
    read IP          -> get_data(): hashrate (TH/s), wattage, wattage_limit, fans (rpm),
                        temperatures (board, chip, env), is_mining, uptime
    stop IP          -> stop_mining()
    resume IP        -> resume_mining()
    power IP WATTS   -> set_power_limit(WATTS)
    use IP CLASS     -> later steps use this pyasic class for IP (where identification
                        is known to race: Vnish)
    quit

Each command answers one JSON line: {"ok": true, ...} or {"ok": false, "error": "..."}.
Every call runs under a timeout (STEP_TIMEOUT_S), so a peer that hangs is an error, never
a stuck test. Loopback only: the test passes 127.x.y.z addresses.
"""

import asyncio
import importlib
import json
import sys
import traceback

STEP_TIMEOUT_S = 20.0

try:
    import pyasic
    from pyasic.device.algorithm.hashrate.unit.sha256 import SHA256Unit
except ImportError as e:  # the Rust test turns this into its install hint
    print(json.dumps({"ok": False, "error": f"pyasic not importable: {e}"}), flush=True)
    sys.exit(3)

MINERS = {}
INCLUDE = ["hashrate", "expected_hashrate", "wattage", "wattage_limit", "fans", "hashboards", "env_temp", "is_mining", "uptime", "fw_ver", "mac"]


def num(v):
    """A number as a float (pyasic's hashrates are objects with float())."""
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


async def miner_for(ip):
    m = MINERS.get(ip)
    if m is None:
        m = await pyasic.get_miner(ip)
        if m is None:
            raise RuntimeError("pyasic.get_miner returned None (not identified)")
        MINERS[ip] = m
    return m


async def identify(ip):
    MINERS.pop(ip, None)
    m = await miner_for(ip)
    return {
        "class": type(m).__name__,
        "make": str(m.make) if m.make is not None else None,
        "model": str(m.raw_model) if m.raw_model is not None else None,
        "firmware": str(m.firmware) if m.firmware is not None else None,
        "version": str(m.fw_ver) if getattr(m, "fw_ver", None) is not None else None,
    }


async def read(ip):
    m = await miner_for(ip)
    # The fields the suite compares (the whole of get_data also reads pools and the
    # configuration, which the conformance suite does not cover).
    d = await m.get_data(include=INCLUDE)
    hr = d.hashrate
    ths = float(hr.into(SHA256Unit.TH)) if hr is not None else None
    boards = []
    for b in d.hashboards or []:
        boards.append(
            {
                "slot": b.slot,
                "hashrate_ths": float(b.hashrate.into(SHA256Unit.TH)) if b.hashrate is not None else None,
                "temp": num(b.temp),
                "chip_temp": num(b.chip_temp),
            }
        )
    return {
        "make": d.make,
        "model": d.model,
        "firmware": d.firmware,
        "fw_ver": d.fw_ver,
        "hashrate_ths": ths,
        "wattage": num(d.wattage),
        "wattage_limit": num(d.wattage_limit),
        "fans": [num(f.speed) for f in (d.fans or [])],
        "boards": boards,
        "env_temp": num(d.env_temp),
        "temperature_avg": num(d.temperature_avg),
        "is_mining": d.is_mining,
        "uptime": num(d.uptime),
        "mac": d.mac,
    }


async def stop(ip):
    m = await miner_for(ip)
    return {"result": await m.stop_mining()}


async def resume(ip):
    m = await miner_for(ip)
    return {"result": await m.resume_mining()}


async def power(ip, watts):
    m = await miner_for(ip)
    return {"result": await m.set_power_limit(int(watts))}


# Classes the suite may pin (`use`), by name.
CLASSES = {"VNishS19Pro": ("pyasic.miners.antminer.vnish.X19.S19", "VNishS19Pro")}


async def use(ip, name):
    module, cls = CLASSES[name]
    MINERS[ip] = getattr(importlib.import_module(module), cls)(ip)
    return {"class": name}


STEPS = {"use": use, "identify": identify, "read": read, "stop": stop, "resume": resume, "power": power}


async def main():
    loop = asyncio.get_running_loop()
    print(json.dumps({"ok": True, "ready": True, "pyasic": getattr(pyasic, "__version__", "?")}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            return
        step = STEPS.get(words[0])
        if step is None:
            out = {"ok": False, "error": f"unknown step {words[0]}"}
        else:
            try:
                res = await asyncio.wait_for(step(*words[1:]), STEP_TIMEOUT_S)
                out = {"ok": True, **res}
            except asyncio.TimeoutError:
                out = {"ok": False, "error": f"timeout after {STEP_TIMEOUT_S} s"}
            except Exception as e:  # noqa: BLE001 - reported to the test, which asserts on it
                out = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)}
        print(json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    # pyasic's "partially supported miner" warnings go to stderr, not into the protocol.
    asyncio.run(main())
