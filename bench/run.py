#!/usr/bin/env python3
"""rackwarden's site-scale benchmark: runs every figure, prints one table, writes JSON.

Run through bench/run.sh (which builds in release mode and sets up the pyasic venv):

    bash bench/run.sh [--quick] [--only miners,modbus,decide,reaction,grid,site,policy,journal,scan] [--json FILE]

Every figure runs on loopback (127.0.0.0/8) against the project's simulators, each in a
child process bounded in time. Figures:
  1. miner fleet poll, 1,000 and 10,000 simulated miners (six firmwares): wall, client CPU
     per miner, peak RSS; pyasic on a sample of the same fleet (CPU ratio);
  2. Modbus: 1,000 simulated PDUs read once per second for 10 s: reads/s, CPU per read,
     share of one core, p99 latency; pymodbus's async client on the same devices;
  3. decide on examples/site-100mw.toml: median and p99 per tick;
  4. reaction: a feed's GPU racks step to their maximum limit; time from the reading that
     shows it to the first shed command arriving at a simulated miner, p50/p99;
  4b. grid: a grid target (issue 19) 100 kW under the example site's load, set through the
     inbox the API fills; time to the first shed command at a simulated miner and to the
     simulator's site meter under the target (agent/examples/bench_grid.rs);
  5. `rackwarden run` on the whole 100 MW site served by `rackwarden sim`: the agent
     process's CPU (fraction of one core, from /proc/PID/stat) and peak RSS (VmHWM) over
     a 60 s window after a warm-up; bytes written to disk (/proc/PID/io) during the
     first decisions' mass shed and in a steady minute after it; the intent commit
     latency p50/p99 the agent reports at its stop;
  6. policy (trough filling): 24 simulated hours of examples/site.toml in-process under
     inference-day, training-swings and colo (and colo on examples/site-colo.toml), each
     with gpu_reserve = "limits" and "measured": mining energy against the ideal, sleep
     cycles, GPU caps, excursions above B, worst case against H (agent/examples/bench_policy.rs);
  7. journal: `rackwarden journal --since 1h` on a 90-day journal of the example site
     (built through the agent's commit path by agent/examples/bench_journal.rs);
  8. scan: `rackwarden scan` over 1,024 loopback addresses holding the example site's 188
     simulated miners (served by `rackwarden sim`): wall time, median of 5 runs.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile():
    """30,000 simulated miners need ~50,000 listening sockets: raise the fd limit that
    every child inherits (root may raise the hard limit; others get their hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (262144, 131072, 65536):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return want
        except (ValueError, OSError):
            continue
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def run(cmd, timeout, **kw):
    """Runs a command bounded in time; returns its stdout (stderr goes to ours)."""
    print(f"$ {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        print(out)
        raise RuntimeError(f"timed out after {timeout} s") from None
    print(p.stdout, end="", flush=True)
    print(f"  ({time.monotonic() - t0:.0f} s, exit {p.returncode})", flush=True)
    return p.stdout


def num(pattern, text, default=float("nan")):
    m = re.search(pattern, text)
    return float(m.group(1)) if m else default


def row(figure, value, unit, peer=None, peer_name=None, ratio=None, goal=None, met=None, note=""):
    return {
        "figure": figure,
        "value": value,
        "unit": unit,
        "peer_value": peer,
        "peer": peer_name,
        "ratio": ratio,
        "goal": goal,
        "met": met,
        "note": note,
    }


def fig_miners(args, rows):
    cmd = [os.path.join(REL, "examples", "miner_bench"), "--counts", "1000,10000"]
    if args.python_pyasic:
        cmd += ["--pyasic", args.python_pyasic, "--pyasic-sample", "300"]
    out = run(cmd, timeout=420)
    py_name = "pyasic 0.79"
    for n in (1000, 10000):
        m = re.search(
            rf"miners={n} poll=warm ok=(\d+) failed=(\d+) wall_ms=(\d+) client_cpu_per_miner_us=([\d.]+) peak_rss_mib=([\d.]+)",
            out,
        )
        if not m:
            rows.append(row(f"miners {n:,}: poll", None, "", note="no result"))
            continue
        ok, failed, wall, cpu, rss = int(m.group(1)), int(m.group(2)), float(m.group(3)), float(m.group(4)), float(m.group(5))
        # The pyasic line that follows this fleet's block.
        block = out[m.end():]
        nxt = block.find("miners=10000 poll=cold") if n == 1000 else -1
        if nxt >= 0:
            block = block[:nxt]
        py = num(r"pyasic_cpu_per_miner_us=([\d.]+)", block, None)
        ours = num(r"pyasic_cpu_per_miner_us=[\d.]+ ours=([\d.]+)", block, None)
        note = f"{ok} ok, {failed} failed, warm poll"
        rows.append(row(f"miners {n:,}: poll wall", wall, "ms", goal="<= 1000 ms" if n == 10000 else None,
                        met=(wall <= 1000) if n == 10000 else None, note=note))
        rows.append(row(f"miners {n:,}: CPU per miner", cpu, "us",
                        peer=py, peer_name=py_name if py else None,
                        ratio=(py / ours) if py and ours else None,
                        goal="<= 100 us" if n == 10000 else None,
                        met=(cpu <= 100) if n == 10000 else None,
                        note=("peer: pyasic on 300 of the same miners, firmwares it reads completely; ratio against our CPU per miner in the same run" if py else "")))
        rows.append(row(f"miners {n:,}: peak RSS", rss, "MiB", goal="<= 64 MiB" if n == 10000 else None,
                        met=(rss <= 64) if n == 10000 else None, note="client process, whole run so far"))


def fig_modbus(args, rows):
    secs = "5" if args.quick else "10"
    out = run([os.path.join(REL, "examples", "modbus_bench"), "--devices", "1000", "--seconds", secs,
               "--current-thread", "--python", args.python_pymodbus], timeout=240)
    res = {}
    for line in out.splitlines():
        if line.startswith("{"):
            try:
                v = json.loads(line)
                res["pymodbus" if v["client"].startswith("pymodbus") else "rw"] = v
            except (ValueError, KeyError):
                pass
    rw, py = res.get("rw"), res.get("pymodbus")
    if not rw:
        rows.append(row("modbus 1,000 devices", None, "", note="no result"))
        return
    pn = py["client"] if py else None
    rows.append(row("modbus: reads/s", rw["reads_per_s"], "reads/s", py and py["reads_per_s"], pn,
                    note=f"{rw['reads']} reads, {rw['errors']} errors" + (f"; pymodbus {py['errors']} errors" if py else "")))
    rows.append(row("modbus: CPU, share of one core", rw["core_fraction"] * 100, "%", py and py["core_fraction"] * 100, pn,
                    goal="<= 20 %", met=rw["core_fraction"] <= 0.20))
    rows.append(row("modbus: CPU per read", rw["cpu_us_per_read"], "us", py and py["cpu_us_per_read"], pn,
                    ratio=(py["cpu_us_per_read"] / rw["cpu_us_per_read"]) if py else None,
                    goal=">= 5x less than pymodbus",
                    met=(py["cpu_us_per_read"] / rw["cpu_us_per_read"] >= 5) if py else None,
                    note="a read: 3 requests, 152 values"))
    rows.append(row("modbus: p99 read latency", rw["p99_ms"], "ms", py and py["p99_ms"], pn,
                    note="all devices read at the same instant each second"))


def fig_decide(args, rows):
    ticks = "600" if args.quick else "3000"
    out = run([os.path.join(REL, "examples", "bench_decide"), "examples/site-100mw.toml", ticks], timeout=300)
    med = num(r"all:\s+\d+ ticks\s+median\s+([\d.]+) ms", out)
    p99 = num(r"all:\s+\d+ ticks\s+median\s+[\d.]+ ms\s+p99\s+([\d.]+) ms", out)
    cmed = num(r"cpu:\s+\d+ ticks\s+median\s+([\d.]+) ms", out)
    cp99 = num(r"cpu:\s+\d+ ticks\s+median\s+[\d.]+ ms\s+p99\s+([\d.]+) ms", out)
    rows.append(row("decide 100 MW: median per tick (wall)", med, "ms", goal="<= 2 ms", met=med <= 2))
    rows.append(row("decide 100 MW: p99 per tick (wall)", p99, "ms", goal="<= 2 ms", met=p99 <= 2,
                    note="30,000 miners; fast and slow ticks, GPU surges with sheds and restores; wall time includes other processes holding the core"))
    rows.append(row("decide 100 MW: median per tick (thread CPU)", cmed, "ms", goal="<= 2 ms", met=cmed <= 2))
    rows.append(row("decide 100 MW: p99 per tick (thread CPU)", cp99, "ms", goal="<= 2 ms", met=cp99 <= 2))


def fig_policy(args, rows):
    hours = "4" if args.quick else "24"
    out = run([os.path.join(REL, "examples", "bench_policy"), "--hours", hours, "--json"], timeout=1200)
    print(out, flush=True)
    runs = None
    for line in out.splitlines():
        if line.startswith("["):
            runs = json.loads(line)
    if not runs:
        rows.append(row("policy", None, "", note="no result"))
        return
    by = {(r["profile"], r["reserve"]): r for r in runs}
    for (profile, reserve), r in by.items():
        lim = by.get((profile, "limits"))
        ratio = r["mining_mwh"] / lim["mining_mwh"] if lim and reserve == "measured" and lim["mining_mwh"] > 0 else None
        goal, met = None, None
        if profile == "inference-day" and reserve == "measured":
            goal, met = ">= 85% of ideal", r["share"] >= 0.85
        rows.append(row(f"policy {profile} [{reserve}]: mining share of the ideal", 100 * r["share"], "%",
                        peer=100 * lim["share"] if lim and reserve == "measured" else None,
                        peer_name="limits" if reserve == "measured" else None, ratio=ratio, goal=goal, met=met,
                        note=(f"{r['mining_mwh']:.2f} of {r['ideal_mwh']:.2f} MWh in {r['hours']} h; "
                              f"sleeps/miner/day {r['sleeps_per_miner_day']:.2f}; GPU caps {r['gpu_caps']}; "
                              f"excursions above B {r['excursions']} (p99 {r['excursion_p99_s']:.0f} s, longest {r['excursion_max_s']:.0f} s); "
                              f"worst case {100 * r['worst_over_h']:.1f}% of H; decisions with P_worst > H and mining left {r['ceiling_breaches']}; "
                              f"highest sample {100 * r['peak_over_rating']:.1f}% of a rating")))


def fig_reaction(args, rows):
    trials = "6" if args.quick else "16"
    out = run([os.path.join(REL, "examples", "bench_reaction"), "examples/site.toml", "--trials", trials, "--json"],
              timeout=600)
    v = None
    for line in out.splitlines():
        if line.startswith("{"):
            v = json.loads(line)
    if not v:
        rows.append(row("reaction", None, "", note="no result"))
        return
    goal = v["meter_interval_ms"] + 50
    note = (f"{v['trials']} trials ({v['failed']} failed), examples/site.toml live; "
            f"last reading before the decision to arrival p99 {v['last_reading_p99_ms']:.1f} ms, decision to arrival p99 {v['decision_to_arrival_p99_ms']:.1f} ms, step to arrival p99 {v['step_to_arrival_p99_ms']:.0f} ms")
    rows.append(row("reaction: first reading showing the step -> first shed at a miner, p50", v["reaction_p50_ms"], "ms"))
    rows.append(row("reaction: first reading showing the step -> first shed at a miner, p99", v["reaction_p99_ms"], "ms",
                    goal=f"<= {goal} ms (meter interval + 50)", met=v["reaction_p99_ms"] <= goal, note=note))


def fig_grid(args, rows):
    trials = "3" if args.quick else "5"
    out = run([os.path.join(REL, "examples", "bench_grid"), "examples/site.toml", "--trials", trials, "--json"],
              timeout=900)
    v = None
    for line in out.splitlines():
        if line.startswith("{"):
            v = json.loads(line)
    if not v:
        rows.append(row("grid", None, "", note="no result"))
        return
    note = f"{v['trials']} trials ({v['failed']} failed), examples/site.toml live, target {v['shed_kw']:.0f} kW under the load"
    rows.append(row("grid: target set -> first shed at a miner, p50", v["first_shed_p50_ms"], "ms"))
    rows.append(row("grid: target set -> first shed at a miner, max", v["first_shed_max_ms"], "ms",
                    goal="<= 2000 ms", met=v["first_shed_max_ms"] <= 2000, note=note))
    rows.append(row("grid: target set -> site metered under it, max", v["under_max_ms"], "ms",
                    goal="<= 30000 ms", met=v["under_max_ms"] <= 30000))


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        after = f.read().rsplit(")", 1)[1].split()
    return (int(after[11]) + int(after[12])) / CLK_TCK


def proc_status_mib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


def proc_hwm_mib(pid):
    return proc_status_mib(pid, "VmHWM:")


def wait_for(path, needle, proc, timeout):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            return False
        try:
            with open(path, errors="replace") as f:
                if needle in f.read():
                    return True
        except FileNotFoundError:
            pass
        time.sleep(0.5)
    return False


def proc_write_bytes(pid):
    """Bytes the process caused to be written to storage (/proc/PID/io write_bytes)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def fig_site(args, rows):
    window = 20 if args.quick else 60
    exe = os.path.join(REL, "rackwarden")
    tmp = tempfile.mkdtemp(prefix="rackwarden-bench-site-")
    shutil.copy(os.path.join(ROOT, "examples", "site-100mw.toml"), tmp)
    shutil.copy(os.path.join(ROOT, "examples", "gpu-node.token"), tmp)
    cfg = os.path.join(tmp, "site-100mw.toml")
    agent_log = os.path.join(tmp, "agent.log")
    # The simulator's ~48,000 listening sockets do not fit one process's descriptor limit
    # here: serve the site as feed-disjoint parts, one `rackwarden sim` each (same
    # devices, addresses and physics; see bench/split_site.py).
    parts = 1 if args.nofile >= 60000 else 4
    sims, sim_logs = [], []
    agent = None
    try:
        if parts == 1:
            configs = [cfg]
        else:
            subprocess.run([sys.executable, os.path.join(ROOT, "bench", "split_site.py"), cfg, str(parts), tmp],
                           check=True, timeout=120)
            configs = [os.path.join(tmp, f"part-{k}.toml") for k in range(parts)]
        t0 = time.monotonic()
        for k, c in enumerate(configs):
            sim_logs.append(os.path.join(tmp, f"sim-{k}.log"))
            with open(sim_logs[-1], "w") as so:
                sims.append(subprocess.Popen([exe, "--log-format", "json", "sim", "--config", c, "--scenario", "steady"],
                                             stdout=so, stderr=subprocess.STDOUT, cwd=tmp))
        for sim, sim_log in zip(sims, sim_logs):
            if not wait_for(sim_log, "sim.started", sim, 240):
                raise RuntimeError("simulator did not start: " + open(sim_log).read()[-600:])
        sim_start_s = time.monotonic() - t0
        print(f"  simulator ({parts} process(es)) serving the 100 MW site after {sim_start_s:.0f} s", flush=True)
        with open(agent_log, "w") as ao:
            agent = subprocess.Popen([exe, "--log-format", "json", "run", "--config", cfg],
                                     stdout=ao, stderr=subprocess.STDOUT, cwd=tmp)
        t1 = time.monotonic()
        started = wait_for(agent_log, "control.started", agent, 60)
        warm_s = time.monotonic() - t1
        if agent.poll() is not None:
            raise RuntimeError("agent exited: " + open(agent_log).read()[-600:])
        print(f"  agent's first decision after {warm_s:.0f} s (all inputs read: {started})", flush=True)
        time.sleep(5)
        sim_cpu = lambda: sum(proc_cpu_s(p.pid) for p in sims)
        a0, s0, w0 = proc_cpu_s(agent.pid), sim_cpu(), time.monotonic()
        time.sleep(window)
        a1, s1, w1 = proc_cpu_s(agent.pid), sim_cpu(), time.monotonic()
        io_window = proc_write_bytes(agent.pid)
        hwm, sim_hwm = proc_hwm_mib(agent.pid), sum(proc_hwm_mib(p.pid) for p in sims)
        fds = len(os.listdir(f"/proc/{agent.pid}/fd"))
        rss_now = proc_status_mib(agent.pid, "VmRSS:")
        if agent.poll() is not None:
            raise RuntimeError("agent exited during the window")
        frac = (a1 - a0) / (w1 - w0)
        sim_frac = (s1 - s0) / (w1 - w0)
        log = open(agent_log, errors="replace").read()
        counts = {k: log.count(k) for k in ("action.sent", "miner poll failed", "modbus read failed", "gpu node read failed")}
        note = (f"{window} s window after first decision + 5 s; sim and agent share the 2 cores; "
                f"simulator ({parts} processes) used {sim_frac * 100:.0f}% of a core, peak RSS {sim_hwm:.0f} MiB in all; agent log: {counts}")
        rows.append(row("100 MW site: agent CPU, share of one core", frac * 100, "%", goal="<= 50 %", met=frac <= 0.5, note=note))
        rows.append(row("100 MW site: agent peak RSS", hwm, "MiB", goal="<= 160 MiB", met=hwm <= 160,
                        note=f"VmHWM of the agent process since start; at the end: VmRSS {rss_now:.0f} MiB, {fds} open descriptors"))
        # Disk: everything the agent wrote from its start (a new database: every row
        # written once, then the first decisions' mass shed) to the window's end, then a
        # steady stretch once the shed has settled.
        sent = log.count('"action.sent"')
        if io_window is not None:
            shed_mib = io_window / 2**20
            rows.append(row("100 MW site: disk written, agent start to window end", shed_mib, "MiB",
                            goal="<= 20 MiB for 24,000 commands", met=None,
                            note=f"/proc/PID/io write_bytes of the agent since its start ({warm_s + window + 5:.0f} s), "
                                 f"holding {sent} commands sent: {shed_mib * 2**10 / max(sent, 1):.1f} KiB per command "
                                 f"(a new database's 30,000 intent rows, the changed rows, journal rows, WAL "
                                 f"checkpoints, the JSON-lines export)"))
            steady = 20 if args.quick else 60
            time.sleep(steady)
            io_steady = proc_write_bytes(agent.pid)
            steady_sent = open(agent_log, errors="replace").read().count('"action.sent"') - sent
            per_min = (io_steady - io_window) / 2**20 * 60 / steady
            rows.append(row("100 MW site: disk written per minute, after the shed", per_min, "MiB/min",
                            goal="<= 1 MiB/min", met=per_min <= 1,
                            note=f"{steady} s right after the window; {steady_sent} commands sent in it"))
    finally:
        for p in [agent] + sims:
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        # The agent says its commit latency at its stop (`state.commits`).
        try:
            for line in open(agent_log, errors="replace"):
                if '"state.commits"' in line:
                    f = json.loads(line)["fields"]
                    rows.append(row("100 MW site: intent commit p50", f["p50_ms"], "ms",
                                    note=f"{f['commits']} commits, {f['rows']} rows, whole run (SQLite WAL, synchronous=FULL)"))
                    rows.append(row("100 MW site: intent commit p99", f["p99_ms"], "ms", goal="<= 20 ms",
                                    met=f["p99_ms"] <= 20))
        except (OSError, ValueError, KeyError):
            pass
        if args.keep:
            print(f"  logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def fig_journal(args, rows):
    """`rackwarden journal --since 1h` on 90 days of journal of the example site."""
    tmp = tempfile.mkdtemp(prefix="rackwarden-bench-journal-")
    try:
        db = os.path.join(tmp, "rackwarden.db")
        per_day = 1000 if args.quick else 5000
        out = run([os.path.join(REL, "examples", "bench_journal"), db, "90", str(per_day)], timeout=900)
        m = re.search(r"rows=(\d+) build_s=([\d.]+) db_mib=([\d.]+)", out)
        total, mib = int(m.group(1)), float(m.group(3))
        text = open(os.path.join(ROOT, "examples", "site.toml")).read()
        text = text.replace("[agent]\n", f'[agent]\ndatabase_file = "{db}"\n', 1)
        cfg = os.path.join(tmp, "site.toml")
        with open(cfg, "w") as f:
            f.write(text)
        shutil.copy(os.path.join(ROOT, "examples", "gpu-node.token"), tmp)
        exe = os.path.join(REL, "rackwarden")
        walls, lines = [], 0
        for _ in range(7):
            t = time.monotonic()
            r = subprocess.run([exe, "journal", "--config", cfg, "--since", "1h"], capture_output=True,
                               text=True, timeout=60, check=True)
            walls.append((time.monotonic() - t) * 1000)
            lines = len(r.stdout.splitlines())
        walls.sort()
        med = walls[len(walls) // 2]
        rows.append(row("journal --since 1h on 90 days (wall, median of 7)", med, "ms", goal="<= 1000 ms",
                        met=med <= 1000,
                        note=f"{total:,} rows ({per_day:,} commands a day), database {mib:.0f} MiB; "
                             f"{lines - 2} rows printed; whole process (start, site file, query, print)"))
        t = time.monotonic()
        subprocess.run([exe, "journal", "--config", cfg, "--device", "mine-042", "--json"], capture_output=True,
                       timeout=60, check=True)
        rows.append(row("journal --device (90 days, one miner, wall)", (time.monotonic() - t) * 1000, "ms"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fig_scan(args, rows):
    """`rackwarden scan` over 1,024 loopback addresses (8 x /25, a /28 and a /31) holding
    the example site's 188 miners, six firmwares, served by `rackwarden sim`."""
    exe = os.path.join(REL, "rackwarden")
    tmp = tempfile.mkdtemp(prefix="rackwarden-bench-scan-")
    sim = None
    try:
        shutil.copy(os.path.join(ROOT, "examples", "site.toml"), tmp)
        shutil.copy(os.path.join(ROOT, "examples", "gpu-node.token"), tmp)
        sim_log = os.path.join(tmp, "sim.log")
        with open(sim_log, "w") as so:
            sim = subprocess.Popen([exe, "--log-format", "json", "sim", "--config", os.path.join(tmp, "site.toml"),
                                    "--scenario", "steady"], stdout=so, stderr=subprocess.STDOUT, cwd=tmp)
        if not wait_for(sim_log, "sim.started", sim, 120):
            raise RuntimeError("simulator did not start: " + open(sim_log).read()[-600:])
        nets = [f"127.1.{n}.0/25" for n in range(1, 9)] + ["127.1.9.0/28", "127.1.9.16/31"]
        walls, found = [], []
        for _ in range(3 if args.quick else 5):
            t = time.monotonic()
            r = subprocess.run([exe, "scan", *nets], capture_output=True, text=True, timeout=120)
            walls.append(time.monotonic() - t)
            if r.returncode != 0:
                raise RuntimeError(f"scan exited {r.returncode}: {r.stderr[-600:]}")
            found.append(r.stdout.count("[[miners]]"))
            print(f"  {walls[-1]:.2f} s, {found[-1]} miners; {r.stderr.strip()}", flush=True)
        walls.sort()
        med = walls[len(walls) // 2]
        ok = all(f == 188 for f in found)
        rows.append(row("scan: 1,024 addresses, 188 miners (wall, median)", med * 1000, "ms",
                        goal="<= 5000 ms, all 188 found", met=med <= 5.0 and ok,
                        note=f"{len(walls)} runs, {walls[0] * 1000:.0f}-{walls[-1] * 1000:.0f} ms; miners found per "
                             f"run: {found}; whole process; default concurrency 256 and timeout 1000 ms"))
    finally:
        if sim is not None:
            sim.terminate()
            try:
                sim.wait(timeout=20)
            except subprocess.TimeoutExpired:
                sim.kill()
                sim.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:,.{digits}f}"
    return str(v)


def table(rows):
    head = ["figure", "value", "peer value", "ratio", "goal", "met"]
    lines = [head]
    for r in rows:
        unit = f" {r['unit']}" if r["value"] is not None and r["unit"] else ""
        peer = "-" if r["peer_value"] is None else f"{fmt(r['peer_value'])}{unit} ({r['peer']})"
        lines.append([
            r["figure"],
            fmt(r["value"]) + unit,
            peer,
            "-" if r["ratio"] is None else f"{r['ratio']:.1f}x",
            r["goal"] or "-",
            {True: "yes", False: "NO", None: "-"}[r["met"]],
        ])
    md = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(l) + " |" for l in lines[1:]]
    return "\n".join(md)


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="miners,modbus,decide,reaction,grid,site,policy,journal,scan")
    ap.add_argument("--quick", action="store_true", help="shorter runs (smoke test)")
    ap.add_argument("--json", default=os.path.join(ROOT, "target", "bench", "bench.json"))
    ap.add_argument("--python-pyasic", default=None, help="python of a venv with pyasic")
    ap.add_argument("--python-pymodbus", default=None, help="python with pymodbus")
    ap.add_argument("--keep", action="store_true", help="keep the 100 MW run's logs")
    args = ap.parse_args()
    args.python_pymodbus = args.python_pymodbus or args.python_pyasic or sys.executable
    nofile = args.nofile = raise_nofile()
    print(f"RLIMIT_NOFILE for the children: {nofile}", flush=True)
    rows = []
    figs = {"miners": fig_miners, "modbus": fig_modbus, "decide": fig_decide,
            "reaction": fig_reaction, "grid": fig_grid, "site": fig_site, "policy": fig_policy,
            "journal": fig_journal, "scan": fig_scan}
    for name in args.only.split(","):
        try:
            print(f"== {name}", flush=True)
            figs[name](args, rows)
        except Exception as e:  # one figure failing must not lose the others
            print(f"  {name} failed: {e}", flush=True)
            rows.append(row(name, None, "", note=f"failed: {e}"))
    load = os.getloadavg()
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load_average_at_end": load,
        "quick": args.quick,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print()
    print(f"{result['date']} on {result['machine']}, load average at end {load[0]:.1f}")
    print(table(rows))
    for r in rows:
        if r["note"]:
            print(f"- {r['figure']}: {r['note']}")
    print(f"\nJSON: {args.json}")
    return 0 if all(r["value"] is not None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
