#!/usr/bin/env bash
# PufferLib 3.0 on its native C CartPole, CPU only: env steps/s and optimiser
# steps/s of its own trainer for each core (feed-forward, LSTM), one JSON line
# each (see bench/pufferlib_cartpole.py for what is measured), and with
# --until-length L one more line: the wall seconds its default (LSTM) config
# takes to reach mean episode length L.
#
#   bash bench/pufferlib_cartpole.sh --seconds 30 --warmup 10 [--cores none,lstm]
#       [--until-length 195 --limit 600] [-- PUFFERLIB CONFIG FLAGS]
#
# PufferLib's sdist builds every native env and downloads raylib and box2d
# for them while building; here only the CartPole env is built, offline,
# against the raylib 5.5 static library that the sdist ships: setup.py is
# patched to glob only cartpole's binding.c and to skip the downloads. Its
# C++ advantage kernel (pufferlib._C) is built against the venv's PyTorch
# (no nvcc: the CPU version). Everything goes into a venv on Python 3.11
# (PUFFER_VENV, default target/pufferlib-venv) with PyTorch 2.15.0, whose
# PyPI wheel brings the CUDA libraries (about 5 GiB) though only the CPU is
# used. OMP_NUM_THREADS=1, as PufferLib advises: its vector workers
# busy-wait, and more OpenMP threads only contend with them.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=30
warmup=10
cores=none,lstm
until_length=""
limit=600
passthrough=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --seconds) seconds=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --cores) cores=$2; shift 2 ;;
        --until-length) until_length=$2; shift 2 ;;
        --limit) limit=$2; shift 2 ;;
        --) shift; passthrough=("$@"); break ;;
        *) echo "usage: $0 [--seconds S] [--warmup S] [--cores none,lstm] [--until-length L --limit S] [-- FLAGS]" >&2; exit 2 ;;
    esac
done

venv="${PUFFER_VENV:-target/pufferlib-venv}"
[[ -x $venv/bin/python ]] || python3.11 -m venv "$venv"
python="$(cd "$venv" && pwd)/bin/python"
# Importing pufferlib links its resources into the working directory: not here.
if ! (cd "${TMPDIR:-/tmp}" && "$python" -c 'import pufferlib.ocean.cartpole.binding, pufferlib._C' 2>/dev/null); then
    "$python" -m pip install --quiet "torch==2.15.0" "numpy<2" setuptools wheel Cython
    "$python" -m pip install --quiet "gymnasium==0.29.1" "gym==0.23.1" "pettingzoo==1.24.1" \
        "shimmy[gym-v21]" psutil pynvml rich rich_argparse imageio pyro-ppl "heavyball<2"
    src="$(mktemp -d)"
    trap 'rm -rf "$src"' EXIT
    # pip cannot download this sdist without running its setup.py, which
    # downloads more, so it comes from the index's simple API, checked
    # against the sha256 the index gives.
    "$python" - "$src" <<'FETCH'
import hashlib
import os
import re
import sys
import urllib.parse
import urllib.request

index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/") + "/pufferlib/"
page = urllib.request.urlopen(index).read().decode()
url, digest = re.search(r'href="([^"#]*/pufferlib-3\.0\.0\.tar\.gz)#sha256=([0-9a-f]+)"', page).groups()
data = urllib.request.urlopen(urllib.parse.urljoin(index, url)).read()
if hashlib.sha256(data).hexdigest() != digest:
    sys.exit("pufferlib-3.0.0.tar.gz: sha256 mismatch")
with open(os.path.join(sys.argv[1], "pufferlib-3.0.0.tar.gz"), "wb") as sdist:
    sdist.write(data)
FETCH
    tar -xzf "$src/pufferlib-3.0.0.tar.gz" -C "$src"
    "$python" - "$src/pufferlib-3.0.0/setup.py" <<'EOF'
import sys

path = sys.argv[1]
text = open(path).read()
edits = {
    "glob.glob('pufferlib/ocean/**/binding.c', recursive=True)": "['pufferlib/ocean/cartpole/binding.c']",
    "download_raylib('raylib-5.5_webassembly', '.zip')": "pass",
    "download_box2d('box2d-web')": "pass",
    "download_box2d(BOX2D_NAME)": "pass",
}
for old, new in edits.items():
    if old not in text:
        sys.exit(f"PufferLib's setup.py no longer holds {old!r}")
    text = text.replace(old, new)
open(path, "w").write(text)
EOF
    (cd "$src/pufferlib-3.0.0" && "$python" -m pip install --quiet --no-deps --no-build-isolation .)
fi

IFS=, read -r -a core_list <<<"$cores"
for core in "${core_list[@]}"; do
    echo "## PufferLib 3.0 puffer_cartpole, core $core, $seconds s after $warmup s" >&2
    OMP_NUM_THREADS=1 "$python" bench/pufferlib_cartpole.py --seconds "$seconds" --warmup "$warmup" \
        --core "$core" --json -- "${passthrough[@]}"
done
if [[ -n $until_length ]]; then
    echo "## PufferLib 3.0 puffer_cartpole, default config, until mean episode length $until_length (at most $limit s)" >&2
    OMP_NUM_THREADS=1 "$python" bench/pufferlib_cartpole.py --until-length "$until_length" --limit "$limit" \
        --core lstm --json -- "${passthrough[@]}"
fi
