#!/usr/bin/env bash
# The documentation keeps up with the code: the man pages lint clean (groff -man -ww -z prints
# nothing); every option the command line parsers accept (the "-x"/"--xyz" literals they compare
# arguments with in app/*.c) is in man/kvscope.1 and every option the man page names is accepted;
# every key the UI handles (app/ui.c on_key, the panels' key functions in views/) is in the help
# overlay's tables and in the man page's KEYS / REPLAY KEYS sections, every key those list is
# handled, and the replay help lists no key that only a live run uses. Prints "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
pass=0; fail=0
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }

if ! command -v groff >/dev/null; then
    bad "groff not installed (scripts/setup.sh installs it)"
else
    out=$(groff -man -ww -z man/*.1 man/*.5 2>&1)
    if [ -z "$out" ]; then ok "groff -man -ww -z man/*.1 man/*.5 prints nothing"; else bad "man lint:"; echo "$out" | sed 's/^/   | /'; fi
fi

if ! command -v python3 >/dev/null; then bad "python3 not installed"; echo "$pass passed, $fail failed"; exit 1; fi
res=$(python3 - <<'EOF'
import glob, re, sys

def out(ok, what):
    print(("ok   " if ok else "FAIL ") + what)

# ---- options ----
src = ''.join(open(f).read() for f in sorted(glob.glob('app/*.c')))
code_opts = set(re.findall(r'strn?cmp\(\s*[a-z_\[\]0-9]+\s*,\s*"(--?[A-Za-z][A-Za-z0-9-]*)=?"', src))
man = open('man/kvscope.1').read()
man_plain = man.replace('\\-', '-').replace('\\fB', '').replace('\\fR', '').replace('\\fP', '').replace('\\fI', '')
man_opts = set()
for line in man_plain.splitlines():
    if line.startswith('.\\"'):
        continue
    for m in re.finditer(r'(?:^|[\s"(\[,])(--?[A-Za-z][A-Za-z0-9-]*)', line):
        o = m.group(1).rstrip('-')
        # words such as "non-negative" never start with '-' after a blank; single letters after a
        # single dash are short options, longer single-dash words are not options
        if o.startswith('--') or len(o) == 2:
            man_opts.add(o)
missing = sorted(code_opts - man_opts)
extra = sorted(man_opts - code_opts)
out(len(code_opts) > 20, 'found %d options in app/*.c' % len(code_opts))
out(not missing, 'every accepted option is in man/kvscope.1' + ('' if not missing else ': missing ' + ' '.join(missing)))
out(not extra, 'every option in man/kvscope.1 is accepted' + ('' if not extra else ': not accepted ' + ' '.join(extra)))

# ---- keys ----
NAMES = {"'\\t'": 'Tab', "' '": 'Space', "'\\n'": 'Enter', "'\\r'": 'Enter', 'KEY_ENTER': 'Enter', '27': 'Esc',
         'KEY_LEFT': 'Left', 'KEY_RIGHT': 'Right', 'KEY_UP': 'Up', 'KEY_DOWN': 'Down', 'KEY_NPAGE': 'PgDn',
         'KEY_PPAGE': 'PgUp', 'KEY_HOME': 'Home', 'KEY_END': 'End', 'KEY_BTAB': 'BTab', 'KEY_SLEFT': 'S-Left',
         'KEY_SRIGHT': 'S-Right'}
IGNORE = {'KEY_RESIZE', 'KEY_MOUSE', 'KEY_BACKSPACE', '127', '8'}  # terminal events, prompt editing

def key_name(tok):
    tok = tok.strip()
    m = re.fullmatch(r"KEY_F\((\d+)\)", tok)
    if m: return 'F' + m.group(1)
    if tok in IGNORE: return None
    if tok in NAMES: return NAMES[tok]
    m = re.fullmatch(r"'(.)'", tok)
    if m: return m.group(1)
    return 'UNKNOWN(' + tok + ')'

def keys_in(body):
    ks = set()
    for t in re.findall(r"case\s+(':'|[^:]+?):", body) + re.findall(r"(?:ch|key)\s*==\s*('(?:\\.|[^'])'|KEY_[A-Z]+(?:\(\d+\))?|\d+)", body):
        n = key_name(t)
        if n: ks.add(n)
    return ks

ui = open('app/ui.c').read()
m = re.search(r'static bool on_key\(.*?\n}\n', ui, re.S)
handled = keys_in(m.group(0)) if m else set()
# the prompt's own editing keys (digits, 't' as the token prefix) are not commands
for f in sorted(glob.glob('views/*.c')):
    s = open(f).read()
    for km in re.finditer(r'\n(?:static )?bool [a-z_]+\(struct kvs_panel_state \*st, int key\)\n\{.*?\n}\n', s, re.S):
        handled |= keys_in(km.group(0))
out(len(handled) > 30 and not any(k.startswith('UNKNOWN') for k in handled),
    'found %d keys in app/ui.c and the panels %s' % (len(handled), sorted(k for k in handled if k.startswith('UNKNOWN'))))

def help_tokens(keystr):
    toks = set()
    # "Up/Down" is two keys; "/" alone is the search key
    parts = []
    for w in keystr.split():
        parts += [w] if w == '/' else w.split('/')
    for t in parts:
        if not t: continue
        if re.fullmatch(r'\d-\d', t):
            toks |= {str(i) for i in range(int(t[0]), int(t[2]) + 1)}
        else:
            toks.add(t)
    return toks

def help_table(name):
    m = re.search(r'help_line ' + name + r'\[\] = \{(.*?)\n\};', ui, re.S)
    return set().union(*[help_tokens(k) for k in re.findall(r'\{"([^"]*)",', m.group(1))]) if m else set()

live, replay = help_table('help_live'), help_table('help_replay')
panel = set()
for f in sorted(glob.glob('views/*.c')):
    s = open(f).read()
    hm = re.search(r'\.help = ((?:"(?:[^"\\]|\\.)*"\s*)+)', s)
    if hm:
        text = ''.join(re.findall(r'"((?:[^"\\]|\\.)*)"', hm.group(1)))
        for line in text.split('\\n'):
            if '\\t' in line:
                panel |= help_tokens(line.split('\\t')[0])
in_help = live | replay | panel
miss = sorted(handled - in_help)
out(not miss, 'every key the UI handles is in the help overlay' + ('' if not miss else ': missing ' + ' '.join(miss)))
stale = sorted(k for k in in_help - handled if k != 'mouse')
out(not stale, 'every key in the help overlay is handled' + ('' if not stale else ': not handled ' + ' '.join(stale)))
LIVE_ONLY = set('+-=_mMgGrRsSwWcef') | {'Enter'}
REPLAY_ONLY = set('<>,.:{}()l')
bad_r = sorted(replay & LIVE_ONLY)
bad_l = sorted(live & REPLAY_ONLY)
out(not bad_r, 'the replay help lists no live-only key' + ('' if not bad_r else ': ' + ' '.join(bad_r)))
out(not bad_l, 'the live help lists no replay-only key' + ('' if not bad_l else ': ' + ' '.join(bad_l)))

# man: the macro lines (.B, .BR, .BI) of KEYS hold every key a live run handles; REPLAY KEYS holds
# the replay-only ones
def man_section_keys(title):
    sec = re.search(r'\n\.SH ' + title + r'\n(.*?)\n\.SH ', man, re.S)
    keys = set()
    if not sec: return None
    text = sec.group(1).replace('1 \\- 6', '1-6').replace('\\-', '-').replace('\\e', '\\')
    for line in text.splitlines():
        mm = re.match(r'\.(?:B|BR|BI|IR|RB)\s+(.*)', line)
        if mm:
            for a in re.findall(r'"([^"]*)"|(\S+)', mm.group(1)):
                keys |= help_tokens(a[0] or a[1])
    return keys
mk, mr = man_section_keys('KEYS'), man_section_keys('REPLAY KEYS')
miss = sorted(handled - REPLAY_ONLY - (mk or set()))
out(mk is not None and not miss, 'every key the UI handles is in the man page\'s KEYS' + ('' if not miss else ': missing ' + ' '.join(miss)))
miss = sorted(REPLAY_ONLY & handled - (mr or set()))
out(mr is not None and not miss, 'every replay-only key is in REPLAY KEYS' + ('' if not miss else ': missing ' + ' '.join(miss)))
EOF
)
echo "$res"
pass=$((pass + $(echo "$res" | grep -c '^ok ')))
fail=$((fail + $(echo "$res" | grep -c '^FAIL')))
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
