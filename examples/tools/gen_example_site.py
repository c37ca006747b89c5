out = []
w = out.append
w('''# rackwarden example site: a converted mining site that now hosts four GB200 NVL72-class
# GPU racks. `rackwarden sim` serves every device below on loopback, and `rackwarden demo`
# runs the agent against it. Check it with:
#   cargo run -p rackwarden -- check-config --config examples/site.toml

[site]
id = "example-site"
name = "Example converted mining site"
# The utility service: its own limit, above either feed (the feeds are the tighter limits).
rating_kw = 1500
derate = 1.0

[agent]
http_listen = "127.0.0.1:9180"
log_format = "text"
state_file = "state/state.json"
journal_file = "state/journal.jsonl"

[policy]
# Every threshold and interval has a default (docs/config.md); these are the defaults.
emergency_fraction = 1.0
shed_fraction = 0.90
shed_target_fraction = 0.85
restore_fraction = 0.80
restore_hold_s = 60
restore_step_fraction = 0.05
restore_step_interval_s = 30
seed = 24301

# Two independent utility feeds, each with one GPU row and one mining row.
''')
port = 15001
devices = []
def dev(id, profile, control=False, host="127.0.0.1", transport="tcp", unit=1, p=None):
    global port
    if p is None:
        p = port; port += 1
    devices.append((id, profile, control, host, transport, unit, p))
for f in ["a", "b"]:
    w(f'''[[feeds]]
id = "feed-{f}"
rating_kw = 650
meters = [{{ device = "meter-feed-{f}", point = "inlet_power_kw" }}]
''')
    dev(f"meter-feed-{f}", "generic-meter")
for f in ["a", "b"]:
    w(f'''[[rows]]
id = "rpp-{f}-gpu"
parent = "feed-{f}"
rating_kw = 360
meters = [{{ device = "meter-rpp-{f}-gpu" }}]

[[rows]]
id = "rpp-{f}-mining"
parent = "feed-{f}"
rating_kw = 500
meters = [{{ device = "meter-rpp-{f}-mining" }}]
''')
    dev(f"meter-rpp-{f}-gpu", "generic-meter")
    dev(f"meter-rpp-{f}-mining", "generic-meter")
gpu_racks = []
for f in ["a", "b"]:
    for i in [1, 2]:
        r = f"gpu-{f}{i}"
        gpu_racks.append(r)
        w(f'''[[racks]]
id = "{r}"
kind = "gpu"
parents = ["rpp-{f}-gpu"]
rating_kw = 175
rated_max_kw = 132
meters = [{{ device = "pdu-{r}" }}]
''')
        dev(f"pdu-{r}", "generic-pdu")
# mining racks: (firmware, model watts, min_w, j/th, count, http)
mixes = [
  [("braiins", 3250, 1800, 29.5, 12, 8080), ("luxos", 3010, 1500, 23.0, 12, None)],
  [("whatsminer", 3400, 2000, 34.0, 10, None), ("avalon", 3300, None, 36.0, 12, None)],
  [("antminer_stock", 3250, None, 29.5, 14, 8080), ("vnish", 3100, 1600, 25.0, 10, 8080)],
  [("luxos", 3010, 1500, 23.0, 12, None), ("braiins", 3250, 1800, 29.5, 12, 8080)],
]
mining_racks = []
groups = []
k = 0
for fi, f in enumerate(["a", "b"]):
    for i in range(1, 5):
        r = f"mine-{f}{i}"
        mining_racks.append(r)
        w(f'''[[racks]]
id = "{r}"
kind = "mining"
parents = ["rpp-{f}-mining"]
rating_kw = 125
meters = [{{ device = "pdu-{r}" }}]
''')
        dev(f"pdu-{r}", "generic-pdu", control=True)
        mix = mixes[(i - 1 + fi) % 4]
        outlet = 1
        for gi, (fw, nom, minw, eff, cnt, http) in enumerate(mix):
            groups.append((r, fw, nom, minw, eff, cnt, http, f"127.1.{fi*4+i}.{1+gi*50}", outlet))
            outlet += cnt
w('''# Energy accounts (docs/energy.md): the AI tenants billed for their racks' energy. The
# mining racks are the site's own `mining` account.
[[tenants]]
id = "acme"
name = "Acme AI (feed A racks)"
racks = ["gpu-a1", "gpu-a2"]

[[tenants]]
id = "borealis"
name = "Borealis Labs (feed B racks)"
racks = ["gpu-b1", "gpu-b2"]

''')
w('''# Cooling: three CDUs (liquid) for the GPU racks, four CRAHs (air) for the miners. The
# CRAHs sit behind one RTU-over-TCP serial gateway, unit ids 1 to 4.
[[cooling_zones]]
id = "liquid-gpu"
medium = "liquid"
redundancy = "n+1"
racks = [''' + ", ".join(f'"{r}"' for r in gpu_racks) + ''']
units = [''')
for i in range(1, 4):
    w(f'''  {{ id = "cdu-{i}", capacity_kw = 300, device = "dev-cdu-{i}" }},''')
    dev(f"dev-cdu-{i}", "generic-cooling")
w(''']

[[cooling_zones]]
id = "air-mining"
medium = "air"
redundancy = "n+1"
racks = [''' + ", ".join(f'"{r}"' for r in mining_racks) + ''']
units = [''')
gw = port; port += 1
for i in range(1, 5):
    w(f'''  {{ id = "crah-{i}", capacity_kw = 250, device = "dev-crah-{i}" }},''')
    dev(f"dev-crah-{i}", "generic-cooling", transport="rtu_over_tcp", unit=i, p=gw)
w(''']
''')
w('# Modbus devices. Mining-rack PDUs may switch outlets (the hard lever); nothing else is written.')
for (id, profile, control, host, transport, unit, p) in devices:
    w(f'''[[modbus_devices]]
id = "{id}"
transport = "{transport}"
host = "{host}"
port = {p}
unit_id = {unit}
profile = "{profile}"
timeout_ms = 500''')
    if control:
        w('control = true\nwrite_points = ["outlet_switch"]')
    w('')
w('# Miners: each group is `count` miners at consecutive loopback addresses.')
for (r, fw, nom, minw, eff, cnt, http, addr, outlet) in groups:
    w(f'''[[miner_groups]]
id_prefix = "{r}-{fw}-"
count = {cnt}
first_address = "{addr}:4028"
firmware = "{fw}"
rack = "{r}"
nominal_w = {nom}''')
    if minw: w(f"min_w = {minw}")
    w(f"efficiency_j_th = {eff}")
    if http: w(f"http_port = {http}")
    if fw in ("whatsminer", "antminer_stock", "vnish"):
        w(f'credentials = {{ username = "{"admin" if fw != "antminer_stock" else "root"}", password_env = "RACKWARDEN_{fw.upper()}_PASSWORD" }}')
    w(f'outlet_device = "pdu-{r}"\nfirst_outlet = {outlet}\n')
w('# GPU hosts: one rackwarden gpu-node per rack serves its 72 GPUs (simulated here).')
gp = 17001
for r in gpu_racks:
    w(f'''[[gpu_nodes]]
id = "gpunode-{r}"
rack = "{r}"
source = "remote"
address = "127.0.0.1:{gp}"
token_file = "gpu-node.token"
gpus = 72
gpu_max_w = 1200
''')
    gp += 1
open("examples/site.toml", "w").write("\n".join(out))
