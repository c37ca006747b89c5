#!/usr/bin/env python3
"""Splits a site file into parts by feed, each a valid site file of its own.

    python3 bench/split_site.py SITE.toml PARTS OUTDIR    -> OUTDIR/part-K.toml

Why: a process may hold at most RLIMIT_NOFILE descriptors (20,000 hard on the benchmark
machine, and not raisable there), and the 100 MW site's simulator listens on ~48,000
loopback sockets (a socket per miner API, per miner web port, per Modbus device, per GPU
node). Feeds are independent subtrees (every meter, cooling zone and device belongs to
one feed), so `rackwarden sim` on each part, one process per part, serves the same
devices on the same addresses with the same physics as one process on the whole file.
The agent still runs on the whole file.
"""

import os
import sys
import tomllib


def value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v)}")


def dump(doc):
    out = []
    for k, v in doc.items():
        if isinstance(v, dict):
            out.append(f"[{k}]")
            out += [f"{kk} = {value(vv)}" for kk, vv in v.items()]
            out.append("")
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                out.append(f"[[{k}]]")
                out += [f"{kk} = {value(vv)}" for kk, vv in item.items()]
                out.append("")
        else:
            out.insert(0, f"{k} = {value(v)}")
    return "\n".join(out) + "\n"


def feed_of(doc):
    """Node id -> its feed id."""
    parent = {f["id"]: None for f in doc.get("feeds", [])}
    for r in doc.get("rows", []):
        parent[r["id"]] = r["parent"]
    for r in doc.get("racks", []):
        parent[r["id"]] = r["parents"][0]

    def top(n):
        while parent.get(n):
            n = parent[n]
        return n

    return {n: top(n) for n in parent}


def split(doc, parts):
    feeds = [f["id"] for f in doc["feeds"]]
    if any(k in doc for k in ("site_meters",)) or len(feeds) < parts:
        raise SystemExit("cannot split this site by feed")
    feed = feed_of(doc)
    dev_feed = {}
    for kind in ("feeds", "rows", "racks"):
        for n in doc.get(kind, []):
            for m in n.get("meters", []):
                dev_feed[m["device"]] = feed[n["id"]]
    for z in doc.get("cooling_zones", []):
        f = feed[z["racks"][0]]
        for u in z.get("units", []):
            if "device" in u:
                dev_feed[u["device"]] = f
    for g in doc.get("miner_groups", []):
        if "outlet_device" in g:
            dev_feed[g["outlet_device"]] = feed[g["rack"]]
    out = []
    for k in range(parts):
        mine = set(feeds[k::parts])
        d = {kk: vv for kk, vv in doc.items() if not isinstance(vv, list)}
        d["feeds"] = [f for f in doc["feeds"] if f["id"] in mine]
        d["rows"] = [r for r in doc.get("rows", []) if feed[r["id"]] in mine]
        d["racks"] = [r for r in doc.get("racks", []) if feed[r["id"]] in mine]
        d["cooling_zones"] = [z for z in doc.get("cooling_zones", []) if feed[z["racks"][0]] in mine]
        d["modbus_devices"] = [m for m in doc.get("modbus_devices", []) if dev_feed.get(m["id"]) in mine]
        d["miner_groups"] = [g for g in doc.get("miner_groups", []) if feed[g["rack"]] in mine]
        d["gpu_nodes"] = [g for g in doc.get("gpu_nodes", []) if feed[g["rack"]] in mine]
        for kk, vv in doc.items():
            if isinstance(vv, list) and kk not in d:
                raise SystemExit(f"cannot split `{kk}` by feed")
        out.append(d)
    return out


def main():
    src, parts, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(src, "rb") as f:
        doc = tomllib.load(f)
    for k, d in enumerate(split(doc, parts)):
        with open(os.path.join(outdir, f"part-{k}.toml"), "w") as f:
            f.write(dump(d))


if __name__ == "__main__":
    main()
