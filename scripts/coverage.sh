#!/usr/bin/env bash
# Line coverage of the library (all features) against coverage_config_x86_64.json: fails when it
# falls more than 1 point below the recorded score. `--update` writes the measured score.
set -euo pipefail
cd "$(dirname "$0")/.."
config=coverage_config_x86_64.json
features=$(python3 -c "import json;print(json.load(open('$config')).get('crate_features',''))")
exclude=$(python3 -c "import json;print(json.load(open('$config')).get('exclude_path',''))")
args=(--summary-only --json)
[ -n "$features" ] && args+=(--features "$features")
[ -n "$exclude" ] && args+=(--ignore-filename-regex "$exclude")
cargo llvm-cov clean --workspace >/dev/null 2>&1 || true
cargo llvm-cov "${args[@]}" --output-path target/coverage.json >/dev/null
python3 - "$config" target/coverage.json "${1:-}" <<'PY'
import json, sys
config_path, report_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
config = json.load(open(config_path))
lines = json.load(open(report_path))["data"][0]["totals"]["lines"]
measured = round(lines["percent"], 1)
recorded = float(config["coverage_score"])
print(f"line coverage: {measured}% ({lines['covered']}/{lines['count']} lines), recorded {recorded}%")
if mode == "--update":
    config["coverage_score"] = measured
    json.dump(config, open(config_path, "w"), indent=2)
    open(config_path, "a").write("\n")
    print(f"wrote {measured} to {config_path}")
elif measured < recorded - 1.0:
    sys.exit(f"coverage fell to {measured}%, more than 1 point below {recorded}%")
PY
