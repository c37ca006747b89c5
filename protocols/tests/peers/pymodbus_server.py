#!/usr/bin/env python3
"""Independent Modbus TCP peer for rackwarden's interoperability test (pymodbus 3.16).

Serves unit 1 on 127.0.0.1:PORT with the register layout of
protocols/tests/data/interop_profile.toml. The values are encoded by pymodbus itself
(convert_to_registers), not by rackwarden. Prints "READY <port>" once listening. When
stdin closes it reads the final holding registers and coils back with pymodbus's own client, prints them with the writes it saw as one
JSON line on stdout and exits, so the Rust test can check what its writes did.
"""

import argparse
import asyncio
import json
import sys

try:
    import pymodbus
    from pymodbus.client import AsyncModbusTcpClient, ModbusTcpClient
    from pymodbus.datastore import (
        ModbusDeviceContext,
        ModbusSequentialDataBlock,
        ModbusServerContext,
    )
    from pymodbus.server import ModbusTcpServer
except ImportError as e:  # the Rust test turns this into a clear failure
    print(f"PYMODBUS_MISSING {e}", flush=True)
    sys.exit(3)

DT = ModbusTcpClient.DATATYPE
enc = ModbusTcpClient.convert_to_registers

HR_SIZE = 200
CO_SIZE = 64


def layout():
    """Wire address -> words, in pymodbus's own encoding."""
    hr = [0] * HR_SIZE
    hr[0:2] = enc(12345, DT.UINT32)              # inlet_power 12.345 kW (scale 0.001)
    hr[2:4] = enc(1234567, DT.UINT32)            # energy 123456.7 kWh (scale 0.1)
    hr[4:7] = [1601, 1702, 1803]                 # phase currents x 0.01 A
    hr[20:22] = enc(-1234.5, DT.FLOAT32)                           # f32 ABCD
    hr[22:24] = enc(-1234.5, DT.FLOAT32, word_order="little")      # f32 CDAB
    hr[24:26] = enc(-123456, DT.INT32)                             # i32 ABCD
    hr[26:30] = enc(-98765.4321, DT.FLOAT64)                       # f64 ABCD
    hr[30:31] = enc(-321, DT.INT16)                                # i16, scale 0.1, offset 10
    hr[32:36] = enc(2**40 + 7, DT.UINT64, word_order="little")     # u64 CDAB (words reversed)
    hr[40] = 200                                                   # setpoint 20.0 (scale 0.1)
    hr[42:44] = enc(1.5, DT.FLOAT32)                               # writable f32 limit
    co = [False] * CO_SIZE
    for i in range(0, 8, 2):
        co[i] = True                                               # outlets 1,3,5,7 on
    ir = [0] * 16
    ir[0:2] = enc(-40.25, DT.FLOAT32)                              # input-register f32
    di = [False] * 16
    di[1] = True
    return hr, co, ir, di


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    hr, co, ir, di = layout()
    # pymodbus's device context adds 1 to every wire address before it reaches the
    # block, so each block starts at 1 to make wire address 0 the first element.
    blocks = {
        "hr": ModbusSequentialDataBlock(1, hr),
        "co": ModbusSequentialDataBlock(1, co),
        "ir": ModbusSequentialDataBlock(1, ir),
        "di": ModbusSequentialDataBlock(1, di),
    }
    device = ModbusDeviceContext(**blocks)
    context = ModbusServerContext(devices=device, single=True)
    writes = []

    def trace_pdu(sending, pdu):
        if not sending and pdu.function_code in (5, 6, 15, 16):
            writes.append(
                {
                    "fc": pdu.function_code,
                    "address": pdu.address,
                    "bits": [bool(b) for b in getattr(pdu, "bits", [])],
                    "registers": list(getattr(pdu, "registers", [])),
                }
            )
        return pdu

    server = ModbusTcpServer(context, address=("127.0.0.1", args.port), trace_pdu=trace_pdu)
    task = asyncio.create_task(server.serve_forever())
    # Wait until the socket listens before telling the test.
    for _ in range(200):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", args.port)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.02)
    print(f"READY {args.port} pymodbus {pymodbus.__version__}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    # Read the final state back through pymodbus's own client.
    client = AsyncModbusTcpClient("127.0.0.1", port=args.port, timeout=2)
    await client.connect()
    hr_now = (await client.read_holding_registers(0, count=60)).registers
    co_now = (await client.read_coils(0, count=16)).bits[:16]
    client.close()
    state = {"hr": hr_now, "co": [bool(b) for b in co_now], "writes": writes}
    print(json.dumps(state), flush=True)
    await server.shutdown()
    task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
