#!/usr/bin/env bash
# Debian's Slurm (slurmctld, slurmd, the client commands) for the Slurm executor's tests (tests/test_slurm.py),
# which start a private two-node cluster by hand: no systemd, no munge (auth/none), nothing left running.
# Does nothing when the commands are there already; needs root (or sudo) and the Debian package mirror
# otherwise. Exits 0 when Slurm is there afterwards, 1 when it could not be installed (the tests then skip).
set -uo pipefail

if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null; then
    exit 0
fi
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install-slurm: not root and no passwordless sudo; skipping (the Slurm tests will skip)" >&2
        exit 1
    fi
fi
if ! command -v apt-get >/dev/null; then
    echo "install-slurm: no apt-get (not Debian); install slurmctld, slurmd and slurm-client yourself" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d: the packages' scripts must not start the daemons (the tests start their own cluster).
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [[ ! -e "$POLICY" ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null && $SUDO chmod 755 "$POLICY" && ADDED_POLICY=1
fi
$SUDO apt-get update -qq >/dev/null \
    && $SUDO apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client >/dev/null
[[ "$ADDED_POLICY" == 1 ]] && $SUDO rm -f "$POLICY"
if ! command -v slurmctld >/dev/null || ! command -v sbatch >/dev/null; then
    echo "install-slurm: apt-get install slurmctld slurmd slurm-client failed; the Slurm tests will skip" >&2
    exit 1
fi
echo "install-slurm: $(slurmctld -V 2>/dev/null)"
