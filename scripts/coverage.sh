#!/usr/bin/env bash
# The coverage gate, as rust-vmm-ci's test_coverage.py: line coverage of the library (the
# features of coverage_config_x86_64.json, its exclude_path ignored) must stay within 0.5 points
# of the recorded score, either way. Below: the tests lost coverage. Above: record the new score
# (`bash scripts/coverage.sh --update` writes the measured one), so that a later loss shows.
set -euo pipefail
cd "$(dirname "$0")/.."
config=coverage_config_$(uname -m).json
features=$(python3 -c "import json;print(json.load(open('$config'))['crate_features'])")
exclude=$(python3 -c "import json;print(json.load(open('$config'))['exclude_path'])")
args=(--summary-only --json)
[ -n "$features" ] && args+=(--features "$features")
[ -n "$exclude" ] && args+=(--ignore-filename-regex "$exclude")
cargo llvm-cov clean --workspace >/dev/null 2>&1 || true
cargo llvm-cov test "${args[@]}" --output-path target/coverage.json
python3 - "$config" target/coverage.json "${1:-}" <<'PY'
import json, sys

MAX_DELTA = 0.5
config_path, report_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
config = json.load(open(config_path))
lines = json.load(open(report_path))["data"][0]["totals"]["lines"]
measured = lines["percent"]
recorded = float(config["coverage_score"])
diff = measured - recorded
print(f"line coverage: {measured:.2f}% ({lines['covered']}/{lines['count']} lines), "
      f"recorded {recorded:.2f}% ({diff:+.2f})")
if mode == "--update":
    config["coverage_score"] = round(measured, 2)
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print(f"wrote {config['coverage_score']} to {config_path}")
elif abs(diff) > MAX_DELTA:
    sys.exit(
        f"coverage {measured:.2f}% deviates by {diff:+.2f} from the recorded {recorded:.2f}%: "
        f"it must be within {recorded - MAX_DELTA:.2f}%..{recorded + MAX_DELTA:.2f}%. "
        + ("Record the new score: bash scripts/coverage.sh --update "
           f"(writes coverage_score in {config_path})."
           if diff > 0 else "Add tests for the code that lost coverage.")
    )
PY
