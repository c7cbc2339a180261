#!/usr/bin/env bash
# `kvscope eval --svg FILE` on the tiny test model: the chart parses as XML (python3 xml), holds one
# quality curve per method whose points carry the same achieved CR and KL as the --json rows of
# the same run, sorted by CR, and one memory curve per method ending at the bytes that method's
# highest-CR row holds; a folder that does not exist or a name that is a folder gives one line
# naming the path, exit status 2, and no file. Prints "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
BUILD=${KVS_BUILD:-build}
BIN=${KVS_BIN:-$PWD/$BUILD/kvscope}
TV=$PWD/$BUILD/tests/test_views
TMP=$(mktemp -d "${KVS_TEST_TMP:-/tmp}/evalsvg.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
pass=0; fail=0
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
if [ ! -x "$BIN" ] || [ ! -x "$TV" ]; then echo "missing $BIN or $TV (build first)"; echo "0 passed, 1 failed"; exit 1; fi
"$TV" --tiny-model "$TMP/tiny.gguf" || { echo "cannot write the tiny model"; echo "0 passed, 1 failed"; exit 1; }
E="env XDG_CACHE_HOME=$TMP/cache HOME=$TMP"

$E "$BIN" eval -m "$TMP/tiny.gguf" --methods full,commonkv,quant,streaming --cr 0.3,0.6,0.8 --ctx 64 --decode 0 \
    --passkey none -t 1 --no-cache --json --svg "$TMP/chart.svg" > "$TMP/rows.json" 2> "$TMP/err"
check "eval --svg exits 0" test $? -eq 0
check "the chart is written" test -s "$TMP/chart.svg"
res=$(python3 - "$TMP/chart.svg" "$TMP/rows.json" <<'PY'
import json, sys
import xml.etree.ElementTree as ET
NS = '{http://www.w3.org/2000/svg}'
def out(ok, what): print(('ok   ' if ok else 'FAIL ') + what)
try:
    root = ET.parse(sys.argv[1]).getroot()
except ET.ParseError as e:
    out(False, 'chart parses as XML: %s' % e); sys.exit(0)
out(root.tag == NS + 'svg', 'root element is svg')
doc = json.load(open(sys.argv[2]))
# the chart plots the mean over the texts of each method and target, as the table's "mean" rows
groups = {}
for r in doc['rows']:
    if 'error' in r: continue
    groups.setdefault((r['method'], r['target_cr']), []).append(r)
rows = []
for (meth, tgt), rs in groups.items():
    k = len(rs)
    rows.append({'method': meth, 'target_cr': tgt, 'achieved_cr': sum(r['achieved_cr'] for r in rs) / k,
                 'kl': sum(r['kl'] for r in rs) / k, 'bytes_held': sum(r['bytes_held'] for r in rs) / k})
n_tokens = doc['texts'][0]['prefix'] + doc['texts'][0]['scored']
methods = []
for r in rows:
    if r['method'] not in methods: methods.append(r['method'])
q = {g.get('data-method'): g for g in root.iter(NS + 'g') if g.get('data-chart') == 'quality'}
m = {g.get('data-method'): g for g in root.iter(NS + 'g') if g.get('data-chart') == 'memory'}
out(sorted(q) == sorted(methods), 'one quality curve per method %s' % sorted(q))
out(sorted(m) == sorted(methods), 'one memory curve per method %s' % sorted(m))
def close(a, b, rel): return abs(a - b) <= rel * max(1.0, abs(b))
good = True
for meth in methods:
    want = sorted((r['achieved_cr'], r['kl']) for r in rows if r['method'] == meth)
    pts = q[meth].findall(NS + 'circle') if meth in q else []
    got = sorted((float(c.get('data-achieved-cr')), float(c.get('data-kl'))) for c in pts)
    if len(got) != len(want) or not all(close(g[0], w[0], 2e-4) and close(g[1], w[1], 2e-4) for g, w in zip(got, want)):
        good = False; print('   %s: chart %s, json %s' % (meth, got, want))
    line = q[meth].find(NS + 'polyline') if meth in q else None
    xs = [float(p.split(',')[0]) for p in line.get('points').split()] if line is not None else []
    if xs != sorted(xs) or len(xs) != len(want):
        good = False; print('   %s: polyline x %s' % (meth, xs))
    top = max((r for r in rows if r['method'] == meth), key=lambda r: r['achieved_cr'])
    c = m[meth].find(NS + 'circle') if meth in m else None
    if c is None or abs(int(c.get('data-bytes-held')) - top['bytes_held']) > 1 or int(c.get('data-tokens')) != n_tokens:
        good = False; print('   %s: memory point %s, json held %d' % (meth, None if c is None else c.attrib, top['bytes_held']))
out(good, 'every point is the mean over the texts of the --json rows of the same run (achieved CR, KL, bytes held), sorted by CR')
out(len(rows) == 1 + 3 * (len(methods) - 1), '%d points for %d methods x 3 CRs + full' % (len(rows), len(methods) - 1))
PY
) || res="$res
FAIL the chart check did not run to its end"
echo "$res"
pass=$((pass + $(echo "$res" | grep -c '^ok ')))
fail=$((fail + $(echo "$res" | grep -c '^FAIL')))

# hostile paths: one line naming the path, status 2, nothing written
$E "$BIN" eval -m "$TMP/tiny.gguf" --svg "$TMP/no/such/dir/c.svg" > "$TMP/o2" 2> "$TMP/e2"; rc=$?
check "missing folder: status 2" test $rc -eq 2
check "missing folder: one line naming the path" sh -c "[ \$(wc -l < '$TMP/e2') -eq 1 ] && grep -qF '$TMP/no/such/dir/c.svg' '$TMP/e2'"
check "missing folder: nothing written" test ! -e "$TMP/no"
mkdir "$TMP/adir"
$E "$BIN" eval -m "$TMP/tiny.gguf" --svg "$TMP/adir" > "$TMP/o3" 2> "$TMP/e3"; rc=$?
check "a folder as the name: status 2 and says so" sh -c "[ $rc -eq 2 ] && grep -q 'is a directory' '$TMP/e3'"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
