"""Compare two autoscale_matrix.py --json files case by case: acceptance counts, geometric mean of ours / reference,
mean attainable SLO, and every case whose ratio or SLO moved. Usage: compare_matrix.py A.json B.json"""
import json
import statistics
import sys

a = json.load(open(sys.argv[1]))
b = json.load(open(sys.argv[2]))


def rows(d): return {r["case"]: r for r in d["cases"] if "error" not in r}


ra, rb = rows(a), rows(b)
keys = [k for k in ra if k in rb]


def stat(r):
    j = r["judge"]
    o = r["policies"]["ours"]
    return j["ratio"], o["attainableSloAttainment"], j["cost_ok"], j["slo_ok"], bool(j["dominated_by"]), j["budget_ok"]


agg = {"A": [0,0,0,0], "B": [0,0,0,0]}
diffs = []
for k in keys:
    sa, sb = stat(ra[k]), stat(rb[k])
    for tag, s in (("A", sa), ("B", sb)):
        agg[tag][0] += s[2]
        agg[tag][1] += s[3]
        agg[tag][2] += (not s[4])
        agg[tag][3] += (s[5] is not False)
    if abs(sa[0]-sb[0]) > 0.005 or abs(sa[1]-sb[1]) > 0.001:
        diffs.append((k, sa[0], sb[0], sa[1], sb[1], sa[2], sb[2], sa[3], sb[3]))
print(
    f"cases {len(keys)}: cost_ok A {agg['A'][0]} B {agg['B'][0]} | slo_ok A {agg['A'][1]} B {agg['B'][1]} | "
    f"undominated A {agg['A'][2]} B {agg['B'][2]} | budget A {agg['A'][3]} B {agg['B'][3]}"
)
ra_ = [stat(ra[k])[0] for k in keys]
rb_ = [stat(rb[k])[0] for k in keys]
print("geomean ratio A %.4f B %.4f" % (statistics.geometric_mean(ra_), statistics.geometric_mean(rb_)))
print(
    "mean SLO A %.4f B %.4f"
    % (statistics.mean(stat(ra[k])[1] for k in keys), statistics.mean(stat(rb[k])[1] for k in keys))
)
print(f"{len(diffs)} changed cases (ratio A->B, SLO A->B, cost_ok, slo_ok):")
for d in sorted(diffs, key=lambda d: d[2]-d[1]):
    print(f"  {d[0]}: {d[1]:.3f}->{d[2]:.3f}  {d[3]:.2%}->{d[4]:.2%}  cost_ok {d[5]}->{d[6]} slo_ok {d[7]}->{d[8]}")
