#!/usr/bin/env bash
# The wheel as a user gets it: build the sdist and the wheel (the wheel is built from the sdist), check
# them, install the wheel alone (no dev extras) in a second fresh virtualenv, and run `cai` from an empty
# directory outside the checkout, where only the installed package can supply the shipped files.
# Run by .ci/run after the tests pass; needs `build` and `twine` (the dev extra) in the calling environment.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH                      # nothing from the checkout may leak into the installed package
export HF_HUB_OFFLINE=1 CAI_KIT_CACHE="$WORK/cache"
fail() { echo "wheel smoke: FAILED: $*" >&2; exit 1; }
step() { echo "wheel smoke [${SECONDS}s]: $*"; }

step "build the sdist and the wheel"
python -m build --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; fail "python -m build"; }
python -m twine check --strict "$WORK"/dist/*
WHEEL=$(ls "$WORK"/dist/*.whl)
SDIST=$(ls "$WORK"/dist/*.tar.gz)
# Every shipped file of the checkout is a real file in both: cai_kit/shipped/<kind>/... in the wheel,
# <name>-<version>/cai_kit/shipped/<kind>/... in the sdist.
# shellcheck disable=SC2046
python - "$WHEEL" "$SDIST" $(find constitutions recipes data -type f | sort) <<'PY'
import sys, tarfile, zipfile
shipped = [f"cai_kit/shipped/{path}" for path in sys.argv[3:]]
wheel = {info.filename for info in zipfile.ZipFile(sys.argv[1]).infolist() if not info.is_dir()}
with tarfile.open(sys.argv[2]) as sdist:
    files = {member.name.split("/", 1)[1] for member in sdist.getmembers() if member.isfile()}
missing = [f"wheel: {path}" for path in shipped if path not in wheel] + [f"sdist: {path}" for path in shipped if path not in files]
if missing or len(shipped) < 15:
    sys.exit("shipped files missing: " + ", ".join(missing or ["(too few files listed)"]))
print(f"wheel smoke: {len(shipped)} shipped files in the wheel and the sdist")
PY

step "install the wheel alone in a fresh virtualenv"
python3 -m venv "$WORK/venv"
# shellcheck disable=SC1091
. "$WORK/venv/bin/activate"
pip install --quiet torch==2.13.0     # the CPU build first, as in .ci/run
pip install --quiet "$WHEEL"
mkdir "$WORK/empty" && cd "$WORK/empty"
python -c "import cai_kit, sys; sys.exit(cai_kit.__file__.startswith('$REPO'))" || fail "cai_kit imported from the checkout"

step "cai --version"
VERSION=$(basename "$WHEEL" | cut -d- -f2)
test "$(cai --version)" = "cai-kit, version $VERSION" || fail "cai --version: $(cai --version)"

step "cai ls"
cai ls | tee ls.txt
COUNTS=$(awk '/^constitutions:/{k="c"; next} /^recipes:/{k="r"; next} /^  [a-z]/{n[k]++} END{print n["c"]+0, n["r"]+0}' ls.txt)
test "$COUNTS" = "3 3" || fail "cai ls listed $COUNTS constitutions/recipes, expected 3 3"

step "cai validate, every shipped file by name"
NAMES=$(cd "$REPO" && ls constitutions/*.yaml recipes/*.yaml | xargs -n1 basename | sed 's/\.yaml$//')
# shellcheck disable=SC2086
cai validate $NAMES

step "cai generate -c harmless"
cai generate -c harmless --model tiny-random --limit 2 --out gen
for file in generations.jsonl sft.jsonl prefs.jsonl README.md manifest.json; do
  test -f "gen/$file" || fail "cai generate wrote no gen/$file"
done
# A tiny random model's rows may all be filtered out of sft/prefs, but every prompt has its row.
test "$(wc -l < gen/generations.jsonl)" -eq 2 || fail "gen/generations.jsonl does not hold 2 rows"

step "cai train tiny"
cai train tiny
test -f runs/tiny/model/config.json || fail "cai train tiny wrote no model folder (runs/tiny/model)"
ls runs/tiny/model
step "passed"
