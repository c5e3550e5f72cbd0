#!/usr/bin/env bash
# Integration tests: start the real dragond, dragon-agent, Python workers and dragonctl.
# Every test has a timeout (pytest-timeout); a hang fails with a traceback.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
set +e
"$PYTHON" -m pytest tests -v --timeout=300 -p no:randomly -p no:cacheprovider "$@"
rc=$?
set -e
if [ $rc = 5 ]; then echo "run_integration: pytest collected no tests: that is a failure" >&2; exit 1; fi
exit $rc
