#!/usr/bin/env bash
# Installs every system and Python dependency of the Dragon task service.
# Idempotent: packages already present are skipped quickly. Runs as root
# (or with sudo available); offline except for Debian's and PyPI's registries.
set -euo pipefail

APT_PACKAGES=(
  bazel-bootstrap bazel-platforms default-jdk-headless
  build-essential pkg-config
  protobuf-compiler protobuf-compiler-grpc libprotobuf-dev libgrpc++-dev libgrpc-dev
  libabsl-dev libspdlog-dev libfmt-dev catch2 libucx-dev
  # the Python binding of the C++ client core (client/python/); Python's own headers come from
  # the interpreter that runs the workflow (third_party/python_headers.bzl)
  pybind11-dev
  procps psmisc iproute2 openssl
  # test beds (tests/testbed/): four ssh hosts in network namespaces, a real Slurm cluster
  # with the torque (qsub) wrappers; MPICH and UCX tools for the MPI work
  openssh-server openssh-client util-linux
  munge slurmctld slurmd slurm-client slurm-wlm-torque
  ucx-utils mpich libmpich-dev
)

PY_PACKAGES=(
  "parsl==2026.10.26" "grpcio>=1.60" "grpcio-tools>=1.60" "protobuf>=4.21"
  "pytest>=7.4,<8" pytest-timeout pytest-random-order pandas "sqlalchemy>=2,<2.1"
  numpy matplotlib
)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt packages to install: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q -o DPkg::Lock::Timeout=120 \
    --no-install-recommends "${missing[@]}"
  # Where apt starts services (systemd, no policy-rc.d), installing slurmctld and slurmd starts
  # them, and they would later read the test bed's /etc/slurm/slurm.conf beside its own daemons
  # (tests/testbed/slurm.sh): stop and disable the ones this run installed. munged may run:
  # the test bed uses a running munged as it is.
  for svc in slurmctld slurmd; do
    case " ${missing[*]} " in *" $svc "*) ;; *) continue ;; esac
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
      $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
    elif command -v service >/dev/null; then
      $SUDO service "$svc" stop >/dev/null 2>&1 || true
    fi
  done
else
  echo "install-deps: apt packages already installed"
fi

PY=${PYTHON:-python3}
need_pip=0
"$PY" - 2>/dev/null <<'PYEOF' || need_pip=1
import importlib, sys
for m in ("parsl", "grpc", "grpc_tools", "google.protobuf", "pytest", "pytest_timeout", "random_order", "pandas", "sqlalchemy", "numpy", "matplotlib"):
    importlib.import_module(m)
PYEOF
if [ $need_pip = 1 ]; then
  echo "install-deps: installing Python packages"
  "$PY" -m pip install -q "${PY_PACKAGES[@]}"
else
  echo "install-deps: Python packages already installed"
fi
echo "install-deps: done"
