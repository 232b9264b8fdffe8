#!/usr/bin/env bash
# Build the asv dashboard from the committed results and check that it renders.
#
#   tools/dashboard.sh [BENCHMARK [OUT.png]]
#
# 1. `asv publish`: results/asv/ -> results/html/ (gitignored).
# 2. Offline copy: asv's index.html loads jQuery, flot, bootstrap and two small plugins
#    from CDNs; where Debian's packages are installed (apt-get install libjs-jquery
#    libjs-jquery-flot libjs-bootstrap libjs-jquery-stupidtable) the tags are pointed at
#    local copies in results/html/vendor/, so the site works without a network.
#    md5 (only the regressions page's "ignore" keys) and orderBars (unused) get stubs.
# 3. With chromium installed (Debian: apt-get install chromium): serve results/html on
#    127.0.0.1 for at most two minutes and screenshot BENCHMARK's graph page
#    (default bench_fixed_point.FixedPoint.time_fixed_point) into OUT.png
#    (default docs/img/asv-graph.png).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
bench=${1:-bench_fixed_point.FixedPoint.time_fixed_point}
out=${2:-docs/img/asv-graph.png}
python=${PYTHON:-python}

asv publish
html=results/html
mkdir -p "$html/vendor"
"$python" - "$html" <<'EOF'
import os, re, shutil, sys
html = sys.argv[1]
local = {  # CDN file -> Debian file (flot 4's jquery.flot.js bundles time, selection, categories)
    "jquery-3.3.1.min.js": "/usr/share/javascript/jquery/jquery.min.js",
    "jquery.flot.min.js": "/usr/share/javascript/jquery-flot/jquery.flot.js",
    "jquery.flot.time.min.js": None,
    "jquery.flot.selection.min.js": None,
    "jquery.flot.categories.min.js": None,
    "stupidtable.min.js": "/usr/share/javascript/jquery-stupidtable/stupidtable.min.js",
    "bootstrap.min.js": "/usr/share/javascript/bootstrap/js/bootstrap.min.js",
    "bootstrap.min.css": "/usr/share/javascript/bootstrap/css/bootstrap.min.css",
    "md5.min.js": "stub: window.md5 = function (s) { return String(s); };",
    "jquery.flot.orderBars.js": "stub: /* orderBars: not used by asv's pages */",
}
index = os.path.join(html, "index.html")
text = open(index).read()
missing = []
def repl(match):
    tag, url = match.group(0), match.group(2)
    name = url.rsplit("/", 1)[1]
    src = local.get(name, "")
    if src is None:
        return ""  # bundled in jquery.flot.js
    if src.startswith("stub: "):
        open(os.path.join(html, "vendor", name), "w").write(src[6:] + "\n")
    elif os.path.exists(src):
        shutil.copy(src, os.path.join(html, "vendor", name))
    else:
        missing.append(name)
        return tag
    if tag.startswith("<link"):
        return f'<link rel="stylesheet" href="vendor/{name}">'
    return f'<script src="vendor/{name}"></script>'
text = re.sub(r'<(script|link)[^>]*(?:src|href)="(https://[^"]+)"[^>]*>(?:</script>)?', repl, text)
if "flot-legend-style" not in text:  # flot 4 draws the legend in SVG and leaves its box to CSS
    style = (
        '<style id="flot-legend-style">.legendLayer .background, .legend .background '
        "{ fill: rgba(255, 255, 255, 0.85); stroke: rgba(0, 0, 0, 0.85); stroke-width: 1; }"
        "</style>"
    )
    text = text.replace("</head>", style + "\n  </head>", 1)
open(index, "w").write(text)
print("dashboard: offline copy" + (f", still from the network: {missing}" if missing else ""))
EOF

chromium=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $chromium ]]; then
    echo "dashboard: no chromium; open $html/index.html through any web server"
    exit 0
fi
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
timeout 120 "$python" -m http.server "$port" --bind 127.0.0.1 --directory "$html" >/dev/null 2>&1 &
server=$!
profile=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$profile"' EXIT
sleep 1
mkdir -p "$(dirname "$out")"
timeout 90 "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --window-size=1400,900 --virtual-time-budget=10000 \
    --screenshot="$out" "http://127.0.0.1:$port/#$bench" 2>/dev/null
echo "dashboard: $out"
